"""The delivery ledger of one shard: what happened to every (touch, uid), kept exactly once.

Keys (all share the shard's hash tag, so every script below touches a single cluster slot)::

    c2b:{<plan>:<run>:<shard>}:pg:<gen>:<start>  STRING  the main pass's page at rank <start> of load <gen>:
                                                 one record per uid (uid key, code per touch)
    c2b:{<plan>:<run>:<shard>}:pages     HASH    "<gen>:<start>" -> 1 for every page string (readers by uid)
    c2b:{<plan>:<run>:<shard>}:ledger    HASH    "<touch>|<uid>" -> state, only while not final (p, d) and
                                                 off the page strings (deferred users, states without a code)
    c2b:{<plan>:<run>:<shard>}:out:<b>   STRING  final outcomes of the deferred and orphan passes, records by uid
    c2b:{<plan>:<run>:<shard>}:codes     HASH    the records' layout: buckets, touch slots, state codes
    c2b:{<plan>:<run>:<shard>}:stats     HASH    "<variant>|<touch>|<outcome>" -> messages, "!<reason>" -> failures
    c2b:{<plan>:<run>:<shard>}:deferred  ZSET    "<touch>|<uid>" parked for quiet hours, score = due (epoch s);
                                                 +inf once picked up (pending), removed when final
    c2b:{<plan>:<run>:<shard>}:ckpt      HASH    next (first rank not done), users, pages, "<variant>|-|holdout"

States: ``p`` pending (about to be sent, or in flight), ``s`` sent, ``f:<reason>`` failed for good,
``c`` capped (frequency cap), ``x`` expired (the plan's window closed before the user's hours
opened), ``d`` deferred (quiet hours). Only ``p`` is re-sent by a retry; ``s``, ``f``, ``c``, ``x``
are final. The stats' ``#pending`` counts the ``p`` entries, so a shard can tell in one read whether
anything is still unaccounted for.

A *record* is the uid's 8-byte key (a canonical integer uid is its own int64, any other uid its
8-byte BLAKE2b, :mod:`c2b.delivery.records`) followed by one code byte per touch slot. A state
code names a state in ``codes`` (``p`` and ``d`` first, then ``s``, ``c``, ``f:<reason>``...: 255
at most per shard) and a touch slot a touch name (as many as the plan has). A state that does not
fit (a touch the shard's layout has no slot for, a 256th state) simply stays in the hash: the
layout is an encoding, never a limit. Every read and every state change looks in the hash first,
so the exactly-once rules below hold whichever place holds the entry. Failure reasons are the one
open-ended kind of state: a shard keeps its first :data:`REASON_CODES` - 2 apart and records any
later new one as :data:`OTHER_REASON` (see ``_BOUNDED``), so that neither the stats nor the hash
grow with the number of failed messages.

The main pass (pages by rank of the loaded audience) keeps its entries *by position*: each page
has one record string, ``pg:<gen>:<start>``, where ``<gen>`` is the load's ``loaded_at`` (a
cleared run that loads a new audience never reads another load's positions as its own). The
page's decision is one script call (:meth:`ShardLedger.prepare` with a page): new entries get a
``p`` code in the page's records, held ones their final code, deferred ones a ``d`` code *and* the
hash + queue entry of the deferred pass (the ``d`` code says: this entry now lives by field). A
request's outcomes are one more call per page (:meth:`ShardLedger.finalize`): one GET and one HMGET
(the hash entries of its fields, which keep them off the page path), ``p`` codes turned final in
place, the counters incremented by aggregate. No per-message Redis call on this path but the
deferred ones' HSET + ZADD, and a page of 1,000 users is a ~9 KB string. Both calls take a page's
messages as a few packed arguments (fields and uid keys concatenated, the fields' lengths, each
message's index into a short list of the page's (touch, state, counter) kinds), which the script
splits: the client encodes a dozen arguments a call, not several a message. A retry reads the page
back by position in one round trip (:meth:`ShardLedger.page_states`): final codes are skipped,
``p`` codes are re-sent with their key; when another attempt made an entry pending first, a
"pending" decision for it applies as a re-send (an attempt re-sends what is not final; the
outcome that turns ``p`` final counts, the other one finds it final and counts nothing).

The deferred and orphan passes keep their entries *by field*: the ``ledger`` hash while pending or
deferred, then a record in one of ``2^k`` bucket strings chosen by the uid key (``k`` fixed per
shard from its size, about 100 records a bucket: strings of about 1 KB), moved there by the same
atomic call that makes the entry final. Readers by uid (:meth:`ShardLedger.states`,
:meth:`ShardLedger.bulk_states`: the deferred pass, the delivery log, a cleared run's new load)
look in the hash, then the buckets, then the records of every page of every load (read once into
a dict, O(shard), re-read when the ``#pw`` / ``#bw`` write counters in ``codes`` move). An entry a
crashed attempt of an earlier load left pending in its page is re-sent by the new load and
recorded *there* (its home page), so ``#pending`` stays exact across loads.

Why scripts: a state change and its counter move together in one atomic call, and each call is
conditional on the current state, so replaying it (a flush retried after a Redis blip, two
attempts of one shard racing) never counts a message twice. The stats are therefore the ledger's
own totals, cumulative over every attempt of the shard: what the run report shows.

The ledger, its records and stats outlive the run (TTL, default 7 days): a cleared and re-run DAG
run consults them by uid (not by position: the re-run loads a new audience) and sends nothing
twice. The checkpoint lives and dies with the loaded audience (its ranks mean nothing for another
load), which is why the per-page counters live there.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from c2b.delivery.records import uid_key
from c2b.store.shards import ShardKeys, meta_key, read_layout

PENDING, SENT, DEFERRED, CAPPED, EXPIRED = "p", "s", "d", "c", "x"
LEDGER_TTL = 7 * 24 * 3600
RECORDS_PER_BUCKET = 96  # target; the bucket count is a power of two chosen from the shard's size
MAX_BUCKETS = 8192
DEFAULT_SLOTS = 4  # touch slots of a ledger whose caller did not name the plan's touches
REASON_CODES = 250  # failure reasons a shard keeps apart; later new ones are recorded as OTHER_REASON
OTHER_REASON = f"other reasons (more than {REASON_CODES - 2} in this shard)"

# Shared by the scripts that record outcomes: a failure reason takes a code only while the shard's
# codes number fewer than REASON_CODES; a new reason after that is recorded as OTHER_REASON. A
# gateway whose errors name the user ("invalid number 138...") would otherwise add a stats field
# and, past 255 codes, a ledger hash entry per failed message: keys without bound.
_BOUNDED = f"""
local OTHER, REASON_CODES = 'f:{OTHER_REASON}', {REASON_CODES}
local function bounded(st)
  if string.sub(st, 1, 2) ~= 'f:' or st == OTHER or codes[st] then return st end
  local code = tonumber(redis.call('HGET', DICT, 's:' .. st) or '0')
  if code > 0 then
    codes[st] = code
    return st
  end
  if tonumber(redis.call('HGET', DICT, '#codes') or '0') < REASON_CODES then return st end
  return OTHER
end
"""

# Shared by every script. KEYS[1] ledger hash, KEYS[5] codes hash, KEYS[6..] outcome buckets.
_RECORDS = r"""
local DICT = KEYS[5]
local T = tonumber(redis.call('HGET', DICT, '#t') or '0')
local W = 8 + T
local slots = {}
local function slot_of(f, assign)
  if T == 0 then return nil end
  local bar = string.find(f, '|', 1, true)
  if not bar then return nil end
  local touch = string.sub(f, 1, bar - 1)
  local s = slots[touch]
  if s then return s end
  s = tonumber(redis.call('HGET', DICT, 't:' .. touch) or '-1')
  if s < 0 and assign then
    local n = redis.call('HINCRBY', DICT, '#touches', 1)
    if n <= T then
      s = n - 1
      redis.call('HSET', DICT, 't:' .. touch, s)
    else
      redis.call('HINCRBY', DICT, '#touches', -1)
    end
  end
  if s < 0 then return nil end
  slots[touch] = s
  return s
end
local function find(s, k8)
  local init = 1
  while true do
    local p = string.find(s, k8, init, true)
    if not p then return nil end
    if (p - 1) % W == 0 then return p end
    init = p + 1
  end
end
local names = {}
local bucket = {}  -- bucket strings read in this call (a write drops its copy)
local function recorded(bkey, k8, f)
  if k8 == '' then return false end
  local slot = slot_of(f, false)
  if not slot then return false end
  local s = bucket[bkey]
  if s == nil then
    s = redis.call('GET', bkey)
    bucket[bkey] = s
  end
  if not s then return false end
  local p = find(s, k8)
  if not p then return false end
  local c = string.byte(s, p + 8 + slot)
  if c == 0 then return false end
  local st = names[c]
  if not st then
    st = redis.call('HGET', DICT, 'c:' .. c)
    names[c] = st
  end
  return st
end
local function state_of(f, bkey, k8)
  local cur = redis.call('HGET', KEYS[1], f)
  if cur then return cur end
  return recorded(bkey, k8, f)
end
local touched = {}
local codes = {}
""" + _BOUNDED + r"""local function seal(bkey, k8, f, st)
  local slot = slot_of(f, true)
  if not slot then return false end
  local code = codes[st] or tonumber(redis.call('HGET', DICT, 's:' .. st) or '0')
  if code == 0 then
    local n = redis.call('HINCRBY', DICT, '#codes', 1)
    if n > 255 then
      redis.call('HINCRBY', DICT, '#codes', -1)
      return false
    end
    code = n
    redis.call('HSET', DICT, 's:' .. st, code, 'c:' .. code, st)
  end
  codes[st] = code
  bucket[bkey] = nil
  local s = redis.call('GET', bkey) or ''
  local p = find(s, k8)
  if p then
    redis.call('SETRANGE', bkey, p - 1 + 8 + slot, string.char(code))
  else
    redis.call('SET', bkey, s .. k8 .. string.rep('\0', slot) .. string.char(code) .. string.rep('\0', T - slot - 1))
  end
  touched[bkey] = true
  return true
end
local function make_final(f, st, bkey, k8, cur)
  if seal(bkey, k8, f, st) then
    if cur then redis.call('HDEL', KEYS[1], f) end
  else
    redis.call('HSET', KEYS[1], f, st)
  end
end
local function expire_records(ttl)
  for k in pairs(touched) do redis.call('EXPIRE', k, ttl) end
  if next(touched) then redis.call('HINCRBY', DICT, '#bw', 1) end  -- readers' caches of the buckets
  redis.call('EXPIRE', DICT, ttl)
end
"""

# KEYS: ledger, stats, deferred, receipts, codes, buckets. ARGV: ttl, receipt ttl, receipt, previous
# receipt, then (field, state, "variant|touch", outcome, due, bucket index into KEYS, uid key) x n.
# Moves an entry that is new or deferred to ``state`` (and a pending one back to deferred, or to
# failed when its message can no longer be rendered). The answer is kept under the call's receipt:
# a replay of the same call (its reply was lost when Redis went down right after running it, and the
# client sent it again) gets the first answer back instead of "not yours" for the entries the first
# run made pending. The caller's previous receipt is dropped: it got that answer, so that call can
# no longer be replayed.
_PREPARE = _RECORDS + """
local done = redis.call('HGET', KEYS[4], ARGV[3])
if done then
  local out = {}
  for i = 1, #done do out[i] = tonumber(string.sub(done, i, i)) end
  return out
end
local out = {}
for i = 5, #ARGV, 7 do
  local f, st, vt, outcome, due = ARGV[i], bounded(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local bkey, k8 = KEYS[tonumber(ARGV[i + 5])], ARGV[i + 6]
  local cur = state_of(f, bkey, k8)
  local ok = 0
  if cur == false or cur == 'd' or (cur == 'p' and (st == 'd' or string.sub(st, 1, 2) == 'f:')) then
    ok = 1
    if st == 'p' or st == 'd' then redis.call('HSET', KEYS[1], f, st) else make_final(f, st, bkey, k8, cur) end
    if st == 'p' then redis.call('HINCRBY', KEYS[2], '#pending', 1) end
    if cur == 'p' then redis.call('HINCRBY', KEYS[2], '#pending', -1) end
    if cur == 'd' and st ~= 'd' then
      redis.call('HINCRBY', KEYS[2], vt .. '|deferred', -1)
      if st == 'p' then redis.call('ZADD', KEYS[3], '+inf', f) else redis.call('ZREM', KEYS[3], f) end
    end
    if st == 'd' then
      if cur ~= 'd' then
        redis.call('HINCRBY', KEYS[2], vt .. '|deferred', 1)
        redis.call('HINCRBY', KEYS[2], '#deferred_total', 1)
      end
      redis.call('ZADD', KEYS[3], due, f)
    elseif st ~= 'p' then
      redis.call('HINCRBY', KEYS[2], vt .. '|' .. outcome, 1)
      if string.sub(st, 1, 2) == 'f:' then redis.call('HINCRBY', KEYS[2], '!' .. string.sub(st, 3), 1) end
    end
  end
  out[#out + 1] = ok
end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
expire_records(ttl)
if ARGV[4] ~= '' then redis.call('HDEL', KEYS[4], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[3], table.concat(out))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
return out
"""
RECEIPT_TTL = 3600  # longer than any replay: the client's own retries plus C2B_REDIS_PATIENCE_S

# KEYS: ledger, stats, deferred, receipts, codes, buckets. ARGV: ttl, then (field, state,
# "variant|touch", outcome, bucket index, uid key) x n. Only from pending; a message sent from the
# deferred queue leaves it here.
_FINALIZE = _RECORDS + """
local out = {}
for i = 2, #ARGV, 6 do
  local f, vt, outcome = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  local ok = 0
  if redis.call('HGET', KEYS[1], f) == 'p' then
    local st = bounded(ARGV[i + 1])
    ok = 1
    make_final(f, st, KEYS[tonumber(ARGV[i + 4])], ARGV[i + 5], 'p')
    redis.call('HINCRBY', KEYS[2], '#pending', -1)
    redis.call('HINCRBY', KEYS[2], vt .. '|' .. outcome, 1)
    if string.sub(st, 1, 2) == 'f:' then redis.call('HINCRBY', KEYS[2], '!' .. string.sub(st, 3), 1) end
    redis.call('ZREM', KEYS[3], f)
  end
  out[#out + 1] = ok
end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
expire_records(ttl)
return out
"""

# KEYS: ledger, stats, deferred, receipts, codes, buckets. ARGV: (field, bucket index, uid key) x n.
_STATES = _RECORDS + """
local out = {}
for i = 1, #ARGV, 3 do
  out[#out + 1] = state_of(ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
end
return out
"""

# -- page records (the main pass) -----------------------------------------------------------------
# Shared by the page scripts. KEYS[1] ledger hash; ``DICT`` (the codes hash) and ``PAGE`` (the page
# string) are set by each script before this part. A page string holds at most one record per uid:
# a later state of another touch of the uid goes into the same record.
_PAGE_LIB = r"""
local T = T_HINT or tonumber(redis.call('HGET', DICT, '#t') or '0')
local W = 8 + T
local slots = {}
local function slot_of(touch, assign)
  if T == 0 then return nil end
  local s = slots[touch]
  if s then return s end
  s = tonumber(redis.call('HGET', DICT, 't:' .. touch) or '-1')
  if s < 0 and assign then
    local n = redis.call('HINCRBY', DICT, '#touches', 1)
    if n <= T then
      s = n - 1
      redis.call('HSET', DICT, 't:' .. touch, s)
    else
      redis.call('HINCRBY', DICT, '#touches', -1)
    end
  end
  if s < 0 then return nil end
  slots[touch] = s
  return s
end
local codes = {}
""" + _BOUNDED + r"""local function code_of(st, assign)
  local code = codes[st]
  if code then return code end
  code = tonumber(redis.call('HGET', DICT, 's:' .. st) or '0')
  if code == 0 and assign then
    local n = redis.call('HINCRBY', DICT, '#codes', 1)
    if n > 255 then
      redis.call('HINCRBY', DICT, '#codes', -1)
    else
      code = n
      redis.call('HSET', DICT, 's:' .. st, code, 'c:' .. code, st)
    end
  end
  codes[st] = code
  return code
end
local names = {}
local function name_of(c)
  local st = names[c]
  if not st then
    st = redis.call('HGET', DICT, 'c:' .. c)
    names[c] = st
  end
  return st
end
local function find(s, k8)
  local init = 1
  while true do
    local p = string.find(s, k8, init, true)
    if not p then return nil end
    if (p - 1) % W == 0 then return p end
    init = p + 1
  end
end
local function hash_states(fields)
  local out = {}
  if redis.call('EXISTS', KEYS[1]) == 0 then return out end  -- usually: no entry on the field path
  for i = 1, #fields, 500 do
    local part = redis.call('HMGET', KEYS[1], unpack(fields, i, math.min(i + 499, #fields)))
    for j = 1, #part do out[i + j - 1] = part[j] end
  end
  return out
end
-- A page call's per-message arguments come packed (see _pack_ints): ``n`` numbers of ``w`` bytes
-- each, big-endian; strings concatenated, split by their lengths.
local function ints(s, w, n)
  local out = {}
  if w == 1 then
    for i = 1, n do out[i] = string.byte(s, i) end
  else
    local p = 1
    for i = 1, n do
      local v = 0
      for b = p, p + w - 1 do v = v * 256 + string.byte(s, b) end
      out[i] = v
      p = p + w
    end
  end
  return out
end
local function split(s, lens)
  local out, p = {}, 1
  for i = 1, #lens do
    local q = p + lens[i]
    out[i] = string.sub(s, p, q - 1)
    p = q
  end
  return out
end
local function keys8(s, n)
  local out = {}
  for i = 1, n do out[i] = string.sub(s, i * 8 - 7, i * 8) end
  return out
end
local inc = {}
local function bump(k, n) inc[k] = (inc[k] or 0) + n end
local function counted(vt, outcome, st, n)
  n = n or 1
  bump(vt .. '|' .. outcome, n)
  if string.sub(st, 1, 2) == 'f:' then bump('!' .. string.sub(st, 3), n) end
end
local function flush_counts(key)
  for k, n in pairs(inc) do
    if n ~= 0 then redis.call('HINCRBY', key, k, n) end
  end
end
local s = nil  -- the page string, read when needed (a GET of ~9 KB costs more than the rest of a small call)
local function page()
  if s == nil then s = redis.call('GET', PAGE) or '' end
  return s
end
local edits = {}  -- position in the page (1-based) -> new code
local added = {}  -- uid key -> codes of a record new in this call
local order = {}
-- The code of (uid, slot) in the page and where it is: in a record of the page (its byte position)
-- or new. ``off``: where the caller saw the uid's record (0-based, -1: unknown), checked against
-- the uid key: only that record is read (a GETRANGE, unless the whole page already is), no search.
local function locate(k8, slot, off)
  local rec = added[k8]
  if rec then return rec[slot + 1], nil end
  if off and off >= 0 then
    local r
    if s == nil then
      r = redis.call('GETRANGE', PAGE, off, off + W - 1)
    else
      r = string.sub(s, off + 1, off + W)
    end
    if string.sub(r, 1, 8) == k8 and #r == W then
      local at = off + 9 + slot
      return edits[at] or string.byte(r, 9 + slot), at
    end
  end
  local p = find(page(), k8)
  if not p then return 0, nil end
  local at = p + 8 + slot
  return edits[at] or string.byte(s, at), at
end
local slot_in = {}  -- uid key -> its index in ``order``
-- Where the record of ``k8`` is or will be (0-based), given where locate found its code.
local function offset_of(k8, slot, at)
  if at then return at - 9 - slot end
  local i = slot_in[k8]
  return i and #page() + (i - 1) * W or -1
end
local function set_code(k8, slot, at, code)
  if at then
    edits[at] = code
    return
  end
  local rec = added[k8]
  if not rec then
    rec = {}
    for i = 1, T do rec[i] = 0 end
    added[k8] = rec
    order[#order + 1] = k8
    slot_in[k8] = #order
  end
  rec[slot + 1] = code
end
local function write_page(ttl, expire)
  local tail = {}
  for _, k8 in ipairs(order) do tail[#tail + 1] = k8 .. string.char(unpack(added[k8])) end
  local n = 0
  for _ in pairs(edits) do n = n + 1 end
  if n > 0 and n <= 8 then  -- a few codes (one request's): in place
    for p, c in pairs(edits) do redis.call('SETRANGE', PAGE, p - 1, string.char(c)) end
    if #tail > 0 then redis.call('APPEND', PAGE, table.concat(tail)) end
  elseif n > 0 then  -- many: the page once, rewritten
    page()
    local at = {}
    for p in pairs(edits) do at[#at + 1] = p end
    table.sort(at)
    local parts, prev = {}, 1
    for _, p in ipairs(at) do
      parts[#parts + 1] = string.sub(s, prev, p - 1)
      parts[#parts + 1] = string.char(edits[p])
      prev = p + 1
    end
    parts[#parts + 1] = string.sub(s, prev)
    parts[#parts + 1] = table.concat(tail)
    redis.call('SET', PAGE, table.concat(parts), 'KEEPTTL')
  elseif #tail > 0 then
    redis.call('APPEND', PAGE, table.concat(tail))
  else
    return false
  end
  if expire then redis.call('EXPIRE', PAGE, ttl) end  -- else SETRANGE / SET KEEPTTL kept it
  redis.call('HINCRBY', DICT, '#pw', 1)  -- readers' caches of the pages
  return true
end
"""

# KEYS: ledger, stats, deferred, receipts, codes, pages, page. ARGV: ttl, receipt ttl, receipt,
# previous receipt, page id, n, then the n messages packed (_pack_ints, _pack_fields): their
# fields concatenated, the width and string of the fields' byte lengths, their uid keys concatenated,
# the width and string of their kinds (1-based), "1" when the uid keys are distinct (else "0"), then
# the kinds: (touch, state, "variant|touch", outcome, due) x m. A page's messages share a few kinds,
# so the per-message part is three strings.
# The main pass's decisions on one page, in O(1) Redis calls (but one HSET + ZADD per deferred
# message): new entries become pending, deferred or final in the page's records; a pending one may
# become deferred or failed, and "pending" again is a re-send (another attempt made it pending).
# An entry in the hash belongs to the field path (deferred, or a state without a code) and is left
# alone. Replays answer from the receipt, as in _PREPARE.
_PAGE_PREPARE = "local DICT, PAGE, T_HINT = KEYS[5], KEYS[7], nil\n" + _PAGE_LIB + r"""
local done = redis.call('HGET', KEYS[4], ARGV[3])
if done then
  local out = {}
  for x in string.gmatch(done, '[^,]+') do out[#out + 1] = tonumber(x) end
  return out
end
local ttl = tonumber(ARGV[1])
local P, D = code_of('p', true), code_of('d', true)
page()
local n = tonumber(ARGV[6])
local in_hash, parked = false, false
local out = {}
-- The main pass's usual call: a page not written yet, of a plan of one touch, every message made
-- pending, the uid keys distinct (the caller says so in ARGV[13]), no entry on the field path. Its
-- records are the uid keys each followed by the pending code: built in one gsub, nothing to look up.
local fast = ARGV[13] == '1' and #ARGV == 18 and ARGV[15] == 'p' and s == '' and T == 1 and P ~= 0
  and redis.call('EXISTS', KEYS[1]) == 0
if fast then fast = slot_of(ARGV[14], true) == 0 end
if fast then
  redis.call('APPEND', PAGE, (string.gsub(ARGV[10], '(........)', '%1' .. string.char(P))))
  redis.call('EXPIRE', PAGE, ttl)
  redis.call('HINCRBY', DICT, '#pw', 1)  -- readers' caches of the pages
  for j = 1, n do out[j] = 2 + (j - 1) * W end  -- pending, and where each record is
  bump('#pending', n)
else
local fields = split(ARGV[7], ints(ARGV[9], tonumber(ARGV[8]), n))
local k8s = keys8(ARGV[10], n)
local kind = ints(ARGV[12], tonumber(ARGV[11]), n)
local hs = hash_states(fields)
local seen = {}
local function defer(f, vt, due)
  redis.call('HSET', KEYS[1], f, 'd')
  redis.call('ZADD', KEYS[3], due, f)
  bump(vt .. '|deferred', 1)
  bump('#deferred_total', 1)
  in_hash, parked = true, true
end
for j = 1, n do
  local f, k8, i = fields[j], k8s[j], 14 + (kind[j] - 1) * 5
  local touch, st, vt, outcome, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if string.sub(st, 1, 2) == 'f:' then st = bounded(st) end
  local ok, slot, at = 0, nil, nil
  if not seen[f] and not hs[j] then
    seen[f] = true
    slot = slot_of(touch, true)
    if slot == nil or P == 0 or D == 0 then
      -- No record can hold it: a new entry lives in the hash, as in the field path.
      ok = 1
      in_hash = true
      if st == 'd' then
        defer(f, vt, due)
      else
        redis.call('HSET', KEYS[1], f, st)
        if st == 'p' then bump('#pending', 1) else counted(vt, outcome, st) end
      end
    else
      local code
      code, at = locate(k8, slot)
      local final = string.sub(st, 1, 2) == 'f:'
      if code == 0 or (code == P and (st == 'p' or st == 'd' or final)) then
        ok = 1
        if code == P then
          if st ~= 'p' then bump('#pending', -1) end
        elseif st == 'p' then
          bump('#pending', 1)
        end
        if st == 'p' then
          if code == 0 then set_code(k8, slot, at, P) end
          ok = 2  -- answered with where its record is
        elseif st == 'd' then
          set_code(k8, slot, at, D)  -- marks the entry as the deferred pass's (hash + queue)
          defer(f, vt, due)
        else
          local c = code_of(st, true)
          if c == 0 then
            redis.call('HSET', KEYS[1], f, st)
            in_hash = true
          else
            set_code(k8, slot, at, c)
          end
          counted(vt, outcome, st)
        end
      end
    end
  end
  if ok == 2 then ok = 2 + offset_of(k8, slot, at) end
  out[#out + 1] = ok
end
write_page(ttl, true)
end
flush_counts(KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
if in_hash then redis.call('EXPIRE', KEYS[1], ttl) end
if parked then redis.call('EXPIRE', KEYS[3], ttl) end
redis.call('HSET', KEYS[6], ARGV[5], 1)
redis.call('EXPIRE', KEYS[6], ttl)
redis.call('EXPIRE', DICT, ttl)
if ARGV[4] ~= '' then redis.call('HDEL', KEYS[4], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[3], table.concat(out, ','))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
return out
"""

# KEYS: ledger, stats, codes, page. ARGV: ttl, touch slots (-1: read them), code of "p" (0: read it),
# n, then the n messages packed as in _PAGE_PREPARE (fields, width + lengths, uid keys, width +
# kinds), the width and string of where each one's record was seen (+1; 0: unknown), "1" when the
# uid keys are distinct (else "0"), then the kinds: (touch, its slot or -1, state, its code or 0,
# "variant|touch", outcome) x m.
# Pending -> final (sent or failed) for the messages of one request (or flush) of one page: one GET,
# one HMGET, the codes changed in place, the counters by aggregate. The caller passes the layout it
# read (immutable once written) so a call of one message makes few Redis calls. Only from pending,
# so a replay or a racing attempt's outcome of the same message counts nothing.
_PAGE_FINALIZE = """local DICT, PAGE, T_HINT = KEYS[3], KEYS[4], tonumber(ARGV[2])
if T_HINT < 0 then T_HINT = nil end
""" + _PAGE_LIB + r"""
local ttl = tonumber(ARGV[1])
if tonumber(ARGV[3]) > 0 then codes['p'] = tonumber(ARGV[3]) end
for i = 14, #ARGV, 6 do  -- the caller's layout hints (immutable once written)
  local slot_hint, code_hint = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])
  if slot_hint >= 0 then slots[ARGV[i]] = slot_hint end
  if code_hint > 0 then codes[ARGV[i + 2]] = code_hint end
end
local P = code_of('p', false)
local n = tonumber(ARGV[4])
local offs = ints(ARGV[12], tonumber(ARGV[11]), n)
local in_hash = false
local out = {}
local finals, by_kind, kind_state = 0, {}, {}
-- The usual call: one outcome for messages of one touch (slot 0 of one-slot records), a state that
-- has its code, the uid keys distinct (the caller says so in ARGV[13]), no entry on the field path.
-- Each record is checked where the caller saw it (its uid key, the pending code) and its code
-- changed; a record not found there takes the general lookup below, message by message.
local fast = ARGV[13] == '1' and #ARGV == 19 and T == 1 and ARGV[15] == '0' and tonumber(ARGV[17]) > 0
  and P ~= 0 and n > 4 and redis.call('EXISTS', KEYS[1]) == 0
if fast then
  local keys, c = ARGV[8], tonumber(ARGV[17])
  page()
  for j = 1, n do
    local k8, off, ok = string.sub(keys, j * 8 - 7, j * 8), offs[j] - 1, 0
    local at = off + 9
    if off < 0 or string.byte(s, at) ~= P or edits[at] or string.sub(s, off + 1, off + 8) ~= k8 then
      local code
      code, at = locate(k8, 0, -1)
      if not (code == P and at) then at = nil end
    end
    if at then
      edits[at] = c
      ok = 1
      finals = finals + 1
    end
    out[j] = ok
  end
  by_kind[1], kind_state[1] = finals, bounded(ARGV[16])
else
local fields = split(ARGV[5], ints(ARGV[7], tonumber(ARGV[6]), n))
local k8s = keys8(ARGV[8], n)
local kind = ints(ARGV[10], tonumber(ARGV[9]), n)
local hs = hash_states(fields)
if #fields > 4 then page() end  -- else read only their records (a GET of ~9 KB costs more)
local seen = {}
for j = 1, n do
  local f, k8, off, i = fields[j], k8s[j], offs[j] - 1, 14 + (kind[j] - 1) * 6
  local touch, st, vt, outcome = ARGV[i], ARGV[i + 2], ARGV[i + 4], ARGV[i + 5]
  if string.sub(st, 1, 2) == 'f:' then st = bounded(st) end
  local ok = 0
  if not seen[f] then
    seen[f] = true
    local slot = slot_of(touch, false)
    if hs[j] then
      if hs[j] == 'p' and slot == nil then  -- a touch without a record slot: its entry lives in the hash
        ok = 1
        redis.call('HSET', KEYS[1], f, st)
        in_hash = true
      end
    elseif slot and P ~= 0 then
      local code, at = locate(k8, slot, off)
      if code == P and at then
        ok = 1
        local c = code_of(st, true)
        if c == 0 then
          redis.call('HSET', KEYS[1], f, st)
          in_hash = true
        else
          edits[at] = c
        end
      end
    end
    if ok == 1 then
      finals = finals + 1
      by_kind[kind[j]] = (by_kind[kind[j]] or 0) + 1
      kind_state[kind[j]] = st  -- as recorded (bounded): the same for every message of a kind
    end
  end
  out[#out + 1] = ok
end
end
bump('#pending', -finals)
for k, m in pairs(by_kind) do  -- the counters by kind: a page's outcomes share a few
  local i = 14 + (k - 1) * 6
  counted(ARGV[i + 4], ARGV[i + 5], kind_state[k], m)
end
write_page(ttl, false)
flush_counts(KEYS[2])
redis.call('EXPIRE', KEYS[2], ttl)
if in_hash then redis.call('EXPIRE', KEYS[1], ttl) end
return out
"""

# KEYS: codes. ARGV: buckets, touch slots, ttl. Fixes the shard's record layout once (the first
# caller's proposal wins; every later one reads it back), with the codes of pending and deferred.
_LAYOUT = """
if redis.call('HSETNX', KEYS[1], '#codes', 2) == 1 then
  redis.call('HSET', KEYS[1], 's:p', 1, 'c:1', 'p', 's:d', 2, 'c:2', 'd')  -- what every page record needs
end
redis.call('HSETNX', KEYS[1], '#nb', ARGV[1])
redis.call('HSETNX', KEYS[1], '#t', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return redis.call('HMGET', KEYS[1], '#nb', '#t')
"""

# KEYS: ckpt. ARGV: expected start, next, users, ttl, then (counter, n) x k. Moves the checkpoint
# over one finished page, once.
_ADVANCE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if cur ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'next', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'users', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 'pages', 1)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1])) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

_MASK64 = (1 << 64) - 1
_FIB = 0x9E3779B97F4A7C15


def ledger_shards_key(plan_id: str, run_id: str) -> str:
    """The SET of the run's shards that have a ledger (each adds itself when it fixes its layout):
    what cleanup archives, found without scanning the keyspace."""
    return meta_key(plan_id, run_id).removesuffix(":meta") + ":ledgers"


def bucket_count(members: int) -> int:
    """Return the outcome buckets of a shard of ``members`` users (a power of two)."""
    want = max(1, -(-members // RECORDS_PER_BUCKET))
    return min(MAX_BUCKETS, 1 << (want - 1).bit_length())


class Change(NamedTuple):
    """A ledger state change of one message, with the counter it moves.

    A named tuple, not a frozen dataclass: two are made per message (pending, then final), and a
    frozen dataclass's ``__init__`` sets each field with ``object.__setattr__`` (~1.1 us against
    ~0.35 us here)."""

    field: str
    state: str
    variant_touch: str
    outcome: str
    due: float = 0.0
    page: int = -1  # start rank of the main-pass page of the message (-1: by field, no page)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


_Records = dict[bytes, list[tuple[str | None, bytes]]]  # uid key -> (page key, or None: a bucket; its codes)


@dataclass(frozen=True)
class _Codes:
    """The shard's record layout as read from its ``codes`` hash."""

    width: int  # touch slots per record
    slots: dict[str, int]
    names: dict[int, str]
    buckets: int
    bucket_writes: int
    page_writes: int

    @property
    def by_state(self) -> dict[str, int]:
        return {st: c for c, st in self.names.items()}

    @classmethod
    def of(cls, raw: dict[Any, Any]) -> _Codes:
        slots: dict[str, int] = {}
        names: dict[int, str] = {}
        num: dict[str, int] = {}
        for k, v in raw.items():
            key, val = _text(k) or "", _text(v) or ""
            if key.startswith("t:"):
                slots[key[2:]] = int(val)
            elif key.startswith("c:"):
                names[int(key[2:])] = val
            elif key.startswith("#"):
                num[key] = int(val)
        return cls(num.get("#t", 0), slots, names, num.get("#nb", 0), num.get("#bw", 0), num.get("#pw", 0))


def _records(raw: bytes, width: int) -> dict[bytes, bytes]:
    """Return the records of a record string: uid key -> its codes (one byte per touch slot)."""
    w = 8 + width
    if not width or not raw:
        return {}
    return {raw[i:i + 8]: raw[i + 8:i + w] for i in range(0, len(raw) - w + 1, w)}


def _pack_ints(values: Sequence[int]) -> tuple[int, bytes]:
    """Return non-negative ints as one string of ``width``-byte big-endian numbers: (width, string).

    How a page call passes its per-message numbers: one argument for the page, not one a message
    (redis-py encodes each argument in Python)."""
    top = max(values, default=0)
    if top < 256:
        return 1, bytes(values)
    width = (top.bit_length() + 7) // 8
    return width, b"".join([v.to_bytes(width, "big") for v in values])


def _pack_fields(fields: Sequence[str]) -> tuple[bytes, int, bytes]:
    """Return fields as (their UTF-8 concatenated, width and string of their byte lengths)."""
    joined = "".join(fields)
    raw = joined.encode("utf-8")
    if len(raw) == len(joined):  # ASCII: a field's length in bytes is its length
        lens = list(map(len, fields))
    else:
        lens = [len(f.encode("utf-8")) for f in fields]
    width, packed = _pack_ints(lens)
    return raw, width, packed


def _add_records(into: _Records, where: str | None, raw: bytes | None, width: int) -> None:
    for k8, codes in _records(raw or b"", width).items():
        into.setdefault(k8, []).append((where, codes))


class ShardLedger:
    """The ledger, outcome records, stats, deferred queue and checkpoint of one shard of one run.

    ``touches``: the plan's touch names (sizes the outcome records: one code byte per touch);
    ``members``: the shard's size (sizes the bucket count; read from the run's meta when not given).
    Both only matter the first time the shard's ledger is written: its layout is fixed then.
    """

    def __init__(self, redis: Any, keys: ShardKeys, ttl: int = LEDGER_TTL, ckpt_ttl: int = 48 * 3600,
                 touches: Sequence[str] = (), members: int | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ledger = keys.ledger
        self.stats = f"c2b:{keys.tag}:stats"
        self.deferred = f"c2b:{keys.tag}:deferred"
        self.codes = f"c2b:{keys.tag}:codes"
        self.ckpt = keys.checkpoint
        self.ttl = ttl
        self.ckpt_ttl = ckpt_ttl
        self.slots = max(len(set(touches)), 1) if touches else DEFAULT_SLOTS
        self.members = members
        # redis-py refuses EVALSHA inside a Redis Cluster pipeline: there, scripts run one by one.
        self.pipelined_scripts = not hasattr(redis, "get_node_from_key")
        self._prepare = redis.register_script(_PREPARE)
        self._finalize = redis.register_script(_FINALIZE)
        self._states = redis.register_script(_STATES)
        self._layout_script = redis.register_script(_LAYOUT)
        self._advance = redis.register_script(_ADVANCE)
        self._page_prepare = redis.register_script(_PAGE_PREPARE)
        self._page_finalize = redis.register_script(_PAGE_FINALIZE)
        self._answered = ""  # receipt of the last prepare call whose answer arrived
        self._answered_page = ""  # the same for the page path
        # (touch slots, slot by touch, code by state) as last read: passed to the finalize script
        self._layout_hint: tuple[int, dict[str, int], dict[str, int]] | None = None
        # where the record of a pending main-pass entry is in its page (a hint: checked, may be
        # absent), with its uid key (saves the outcome's call computing it again)
        self._at: dict[str, tuple[int, bytes]] = {}
        self._gen: str | None = None  # the load's generation (its loaded_at): names its page keys
        self._by_field: set[str] = set()  # main-pass entries found in the hash: they stay on the field path
        self._home: dict[str, str] = {}  # main-pass entries pending in another load's page: that page key
        self._others: _Records | None = None  # records of other loads' pages and the buckets, by uid
        self._others_at: tuple[int, frozenset[str]] = (-1, frozenset())
        self._all: _Records | None = None  # records of every page and bucket, by uid (for states())
        self._all_at = (-1, -1)
        self._bits: int | None = None  # log2 of the bucket count, once the layout is known
        self._lock = threading.Lock()

    # -- outcome records ------------------------------------------------------------------------
    def bucket_key(self, bucket: int) -> str:
        return f"c2b:{self.keys.tag}:out:{bucket}"

    def _layout(self, create: bool) -> int | None:
        """Return log2 of the shard's bucket count; fix the layout first when ``create``."""
        if self._bits is not None:
            return self._bits
        with self._lock:
            if self._bits is None:
                if create:
                    proposal = [self._proposed_buckets(), self.slots, self.ttl]
                    nb, _ = self._layout_script(keys=[self.codes], args=proposal)
                    # Another slot than the shard's keys (a Redis Cluster script could not write both).
                    shards = ledger_shards_key(self.keys.plan_id, self.keys.run_id)
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.sadd(shards, self.keys.shard)
                    pipe.expire(shards, self.ttl)
                    pipe.execute()
                else:
                    nb = self.redis.hget(self.codes, "#nb")
                    if nb is None:
                        return None  # nothing recorded yet: every entry is in the hash
                self._bits = int(nb).bit_length() - 1
        return self._bits

    def _proposed_buckets(self) -> int:
        members = self.members
        if members is None:
            layout = read_layout(self.redis, self.keys.plan_id, self.keys.run_id) or {}
            sizes = layout.get("sizes") or []
            members = int(sizes[self.keys.shard - 1]) if 0 < self.keys.shard <= len(sizes) else 0
        return bucket_count(members or RECORDS_PER_BUCKET * 64)

    def _locate(self, fields: Sequence[str], create: bool) -> tuple[list[str], list[tuple[int, bytes]]]:
        """Return the keys of a script call over ``fields`` and, per field, (index in KEYS, uid key)."""
        keys = [self.ledger, self.stats, self.deferred, self.keys.receipts, self.codes]
        bits = self._layout(create)
        out: list[tuple[int, bytes]] = []
        if bits is None:
            keys.append(self.bucket_key(0))  # a placeholder: no record exists
            return keys, [(6, b"")] * len(fields)
        index: dict[int, int] = {}
        shift = 64 - bits
        for f in fields:
            k8 = uid_key(f.partition("|")[2])
            b = ((int.from_bytes(k8, "little") * _FIB) & _MASK64) >> shift if bits else 0
            i = index.get(b)
            if i is None:
                keys.append(self.bucket_key(b))
                i = index[b] = len(keys)
            out.append((i, k8))
        return keys, out

    # -- page records (the main pass) -------------------------------------------------------------
    def gen(self) -> str:
        """Return the generation of the shard's loaded audience (its ``loaded_at``): names its pages."""
        if self._gen is None:
            raw = self.redis.hget(meta_key(self.keys.plan_id, self.keys.run_id), "loaded_at")
            self._gen = (_text(raw) or "0").replace(".", "")
        return self._gen

    def page_key(self, start: int, gen: str | None = None) -> str:
        """The record string of the main-pass page at rank ``start`` of a load (default: this one)."""
        return f"c2b:{self.keys.tag}:pg:{gen or self.gen()}:{start}"

    @property
    def pages_key(self) -> str:
        """The HASH of every page string the shard has ("<gen>:<start>" -> 1): what readers by uid read."""
        return f"c2b:{self.keys.tag}:pages"

    def _page_ids(self) -> list[str]:
        return sorted(_text(k) or "" for k in self.redis.hkeys(self.pages_key))

    def page_states(self, start: int, fields: Sequence[str]) -> list[str | None]:
        """Return the state of each field of this load's main-pass page at rank ``start``.

        One round trip (the page's record string, the codes, the hash's size; a second one for the
        fields' hash entries when the hash holds any); other loads'
        pages and the buckets are read by uid only when they exist, once, and cached until the
        buckets change. A main-pass entry found pending in the hash stays on the field path, one
        pending in another load's page is recorded there (its home): both are remembered here.
        """
        if not fields:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.page_key(start))
        pipe.hgetall(self.codes)
        pipe.hlen(self.ledger)
        raw, codes_raw, in_hash = pipe.execute()
        hashed: list[Any] = [None] * len(fields)
        if in_hash:  # only then the fields' hash entries (usually it holds none: no deferred users)
            pipe = self.redis.pipeline(transaction=False)
            for i in range(0, len(fields), 1000):
                pipe.hmget(self.ledger, list(fields[i:i + 1000]))
            hashed = [v for part in pipe.execute() for v in part]
        codes = _Codes.of(codes_raw)
        self._layout_hint = (codes.width, codes.slots, codes.by_state) if codes.width else None
        mine = _records(raw or b"", codes.width)
        offsets = {k8: i for i, k8 in enumerate(mine)} if mine else {}  # records in page order
        others = self._other_records(codes)
        if not mine and not in_hash and not others:  # a page not written yet, nothing anywhere else
            return [None] * len(fields)
        out: list[str | None] = []
        for f, h in zip(fields, hashed, strict=True):
            if h is not None:
                st = _text(h)
                if st == PENDING:
                    self._by_field.add(f)
                out.append(st)
                continue
            touch, _, uid = f.partition("|")
            slot = codes.slots.get(touch)
            if slot is None:
                out.append(None)  # no record has a slot for the touch yet
                continue
            k8 = uid_key(uid)
            rec = mine.get(k8)
            st = codes.names.get(rec[slot]) if rec and rec[slot] else None
            if st is not None and st != DEFERRED:
                if st == PENDING:
                    self._at[f] = (offsets[k8] * (8 + codes.width), k8)
                out.append(st)
            else:
                out.append(self._elsewhere(f, k8, slot, codes, others) if others else None)
        return out

    def _elsewhere(self, field: str, k8: bytes, slot: int, codes: _Codes, others: _Records) -> str | None:
        """The state of a main-pass entry in other loads' pages or the buckets (final first)."""
        home = None
        for where, rec in others.get(k8, ()):
            st = codes.names.get(rec[slot]) if slot < len(rec) and rec[slot] else None
            if st is None or st == DEFERRED:
                continue
            if st != PENDING:
                return st
            if where is not None:
                home = where
        if home is None:
            return None
        self._home[field] = home
        return PENDING

    def _other_records(self, codes: _Codes) -> _Records | None:
        """Records of other loads' pages and of the buckets, by uid (None when there are none)."""
        if self._others is None or self._others_at[0] != codes.bucket_writes:
            mine = f"{self.gen()}:"
            ids = frozenset(i for i in self._page_ids() if not i.startswith(mine))
            if not ids and not codes.bucket_writes:
                self._others, self._others_at = {}, (codes.bucket_writes, ids)
                return None
            found: _Records = {}
            pipe = self.redis.pipeline(transaction=False)
            names = [f"c2b:{self.keys.tag}:pg:{i}" for i in sorted(ids)]
            for key in names:
                pipe.get(key)
            buckets = codes.buckets if codes.bucket_writes else 0
            for b in range(buckets):
                pipe.get(self.bucket_key(b))
            answers = pipe.execute()
            for key, raw in zip(names, answers, strict=False):
                _add_records(found, key, raw, codes.width)
            for raw in answers[len(names):]:
                _add_records(found, None, raw, codes.width)
            self._others, self._others_at = found, (codes.bucket_writes, ids)
        return self._others or None

    def _all_records(self) -> tuple[_Codes, _Records]:
        """Every page's and bucket's records by uid (cached until a page or a bucket is written)."""
        codes = _Codes.of(self.redis.hgetall(self.codes))
        if self._all is None or self._all_at != (codes.page_writes, codes.bucket_writes):
            found: _Records = {}
            names = [f"c2b:{self.keys.tag}:pg:{i}" for i in self._page_ids()]
            buckets = [self.bucket_key(b) for b in range(codes.buckets if codes.bucket_writes else 0)]
            pipe = self.redis.pipeline(transaction=False)
            for key in names + buckets:
                pipe.get(key)
            answers = pipe.execute()
            for key, raw in zip(names, answers, strict=False):
                _add_records(found, key, raw, codes.width)
            for raw in answers[len(names):]:
                _add_records(found, None, raw, codes.width)
            self._all, self._all_at = found, (codes.page_writes, codes.bucket_writes)
        return codes, self._all

    def main_pass_records(self) -> tuple[dict[str, int], dict[int, str], int, bytes] | None:
        """Return this load's main-pass records whole, when they alone hold the shard's states:
        ``(touch slots, code names, slots per record, the page strings concatenated)``; ``None``
        when anything else may hold a state (an entry in the hash, a bucket written, another load's
        pages), for which readers take :meth:`bulk_states`.

        For readers of a whole shard after its delivery (the delivery log), which then look the
        records up by uid key in bulk instead of by field."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(self.ledger)
        pipe.hgetall(self.codes)
        pipe.hkeys(self.pages_key)
        in_hash, codes_raw, ids_raw = pipe.execute()
        codes = _Codes.of(codes_raw)
        mine = f"{self.gen()}:"
        ids = sorted(_text(i) or "" for i in ids_raw)
        if in_hash or codes.bucket_writes or not codes.width or any(not i.startswith(mine) for i in ids):
            return None
        pipe = self.redis.pipeline(transaction=False)
        for i in ids:
            pipe.get(f"c2b:{self.keys.tag}:pg:{i}")
        pages = [raw or b"" for raw in pipe.execute()] if ids else []
        w = 8 + codes.width
        if any(len(raw) % w for raw in pages):
            return None
        return codes.slots, codes.names, codes.width, b"".join(pages)

    def states(self, fields: Sequence[str]) -> list[str | None]:
        """Return the current state of each ledger field (``None``: never seen), by uid.

        The hash and the buckets in one script (per field); then, for what they do not hold, the
        records of every page of every load (read once, re-read after a write). Cheaper for many
        fields: :meth:`bulk_states`; by position: :meth:`page_states`.
        """
        if not fields:
            return []
        out: list[str | None] = []
        for i in range(0, len(fields), 2000):
            chunk = fields[i:i + 2000]
            keys, where = self._locate(chunk, create=False)
            args: list[Any] = []
            for f, (b, k8) in zip(chunk, where, strict=True):
                args += [f, b, k8]
            out += [_text(v) for v in self._states(keys=keys, args=args)]
        if None in out:
            codes, records = self._all_records()
            if records:
                for i, f in enumerate(fields):
                    if out[i] is None:
                        out[i] = self._by_uid(f, codes, records)
        return out

    def bulk_states(self, fields: Sequence[str]) -> list[str | None]:
        """Return the state of each field like :meth:`states`, without a script: one HMGET of the
        hash, then every record of the shard read once into a dict (O(shard), cached until the
        next write). For readers of a whole shard after its delivery (the delivery log)."""
        if not fields:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(fields), 1000):
            pipe.hmget(self.ledger, list(fields[i:i + 1000]))
        hashed = [_text(v) for part in pipe.execute() for v in part]
        codes, records = self._all_records()  # after the hash: an entry moves from it into a record
        return [h if h is not None else self._by_uid(f, codes, records) if records else None
                for f, h in zip(fields, hashed, strict=True)]

    @staticmethod
    def _by_uid(field: str, codes: _Codes, pages: _Records) -> str | None:
        touch, _, uid = field.partition("|")
        slot = codes.slots.get(touch)
        if slot is None:
            return None
        found = None
        for _where, rec in pages.get(uid_key(uid), ()):
            st = codes.names.get(rec[slot]) if slot < len(rec) and rec[slot] else None
            if st is None or st == DEFERRED:
                continue  # deferred: the hash or a bucket holds its state
            if st != PENDING:
                return st
            found = st
        return found

    def _route(self, changes: Sequence[Change], page: int = -1) -> tuple[list[int], dict[str, list[int]]]:
        """Split changes into the field path (indexes) and the page path (indexes by page key).

        A change's page is its own, else ``page``; without one (or when its entry is in the hash)
        it takes the field path."""
        by_field: list[int] = []
        by_page: dict[str, list[int]] = {}
        keys: dict[int, str] = {}
        for i, c in enumerate(changes):
            start = c.page if c.page >= 0 else page
            if start < 0 or c.field in self._by_field:
                by_field.append(i)
                continue
            key = self._home.get(c.field) if self._home else None
            if key is None:
                key = keys.get(start)
                if key is None:
                    key = keys[start] = self.page_key(start)
            by_page.setdefault(key, []).append(i)
        return by_field, by_page

    def prepare(self, changes: Sequence[Change], receipt: str | None = None, page: int = -1) -> list[bool]:
        """Apply changes to new/deferred entries (and pending -> deferred); return which applied.

        ``receipt`` names this logical call (:meth:`new_receipt`): pass the same one when retrying
        it, so a call that ran but whose answer was lost gets its own answer back. ``page``: the
        main-pass page (start rank) of changes that do not name theirs; then "pending" of an entry
        another attempt made pending applies too (a re-send: the page's records cannot tell whose).
        """
        if not changes:
            return []
        receipt = receipt or self.new_receipt()
        by_field, by_page = self._route(changes, page)
        applied = [False] * len(changes)
        if by_field:
            sub = [changes[i] for i in by_field]
            args: list[Any] = [self.ttl, RECEIPT_TTL, receipt, self._answered]
            keys, where = self._locate([c.field for c in sub], create=True)
            for c, (b, k8) in zip(sub, where, strict=True):
                args += [c.field, c.state, c.variant_touch, c.outcome, f"{c.due:.0f}", b, k8]
            for i, x in zip(by_field, self._prepare(keys=keys, args=args), strict=True):
                applied[i] = bool(x)
            self._answered = receipt
        if by_page:
            self._layout(create=True)  # fixes the touch slots of the records
        for key, idx in by_page.items():
            page_id = key.rpartition(":pg:")[2]
            sub_receipt = f"{receipt}:{page_id}"
            fields: list[str] = []
            k8s: list[bytes] = []
            kind_of: list[int] = []
            kinds: dict[tuple[str, str, str, str, float], int] = {}
            for i in idx:
                c = changes[i]
                touch, _, uid = c.field.partition("|")
                fields.append(c.field)
                k8s.append(uid_key(uid))
                kind = (touch, c.state, c.variant_touch, c.outcome, c.due)
                k = kinds.get(kind)
                if k is None:
                    k = kinds[kind] = len(kinds) + 1
                kind_of.append(k)
            raw, flen_w, flens = _pack_fields(fields)
            kind_w, packed_kinds = _pack_ints(kind_of)
            args = [self.ttl, RECEIPT_TTL, sub_receipt, self._answered_page, page_id, len(idx),
                    raw, flen_w, flens, b"".join(k8s), kind_w, packed_kinds,
                    "1" if len(set(k8s)) == len(k8s) else "0"]  # distinct uid keys: the script's fast path
            for touch, state, vt, outcome, due in kinds:
                args += [touch, state, vt, outcome, f"{due:.0f}"]
            keys = [self.ledger, self.stats, self.deferred, self.keys.receipts, self.codes, self.pages_key, key]
            for i, k8, x in zip(idx, k8s, self._page_prepare(keys=keys, args=args), strict=True):
                applied[i] = bool(x)
                if x >= 2:  # pending: where its record is, for the outcome's call
                    self._at[changes[i].field] = (int(x) - 2, k8)
            self._answered_page = sub_receipt
        return applied

    @staticmethod
    def new_receipt() -> str:
        return uuid.uuid4().hex

    def finalize(self, pipe: Any, changes: Sequence[Change]) -> None:
        """Queue on ``pipe`` (or run, on a cluster): pending -> final state (sent or failed)."""
        if not changes:
            return
        client = pipe if self.pipelined_scripts else self.redis
        by_field, by_page = self._route(changes)
        if by_field:
            sub = [changes[i] for i in by_field]
            args: list[Any] = [self.ttl]
            keys, where = self._locate([c.field for c in sub], create=True)
            for c, (b, k8) in zip(sub, where, strict=True):
                args += [c.field, c.state, c.variant_touch, c.outcome, b, k8]
            self._finalize(keys=keys, args=args, client=client)
        hint = self._layout_hint
        width, slots, by_state = hint if hint else (-1, {}, {})
        at = self._at
        for key, idx in by_page.items():
            fields: list[str] = []
            k8s: list[bytes] = []
            offs: list[int] = []
            kind_of: list[int] = []
            kinds: dict[tuple[str, str, str, str], int] = {}
            for i in idx:
                c = changes[i]
                touch, _, uid = c.field.partition("|")
                fields.append(c.field)
                seen = at.pop(c.field, None)
                if seen is None:
                    offs.append(0)
                    k8s.append(uid_key(uid))
                else:
                    offs.append(seen[0] + 1)
                    k8s.append(seen[1])
                kind = (touch, c.state, c.variant_touch, c.outcome)
                k = kinds.get(kind)
                if k is None:
                    k = kinds[kind] = len(kinds) + 1
                kind_of.append(k)
            raw, flen_w, flens = _pack_fields(fields)
            kind_w, packed_kinds = _pack_ints(kind_of)
            off_w, packed_offs = _pack_ints(offs)
            args = [self.ttl, width, by_state.get(PENDING, 0), len(idx), raw, flen_w, flens, b"".join(k8s),
                    kind_w, packed_kinds, off_w, packed_offs,
                    "1" if len(set(k8s)) == len(k8s) else "0"]  # distinct uid keys: the script's fast path
            for touch, state, vt, outcome in kinds:
                args += [touch, slots.get(touch, -1), state, by_state.get(state, 0), vt, outcome]
            self._page_finalize(keys=[self.ledger, self.stats, self.codes, key], args=args, client=client)

    def advance(self, pipe: Any, start: int, end: int, users: int, counters: dict[str, int]) -> None:
        """Queue on ``pipe`` (or run, on a cluster): move the checkpoint from ``start`` to ``end``."""
        args: list[Any] = [start, end, users, self.ckpt_ttl]
        for k, n in counters.items():
            args += [k, n]
        self._advance(keys=[self.ckpt], args=args, client=pipe if self.pipelined_scripts else self.redis)

    def checkpoint(self) -> int:
        raw = self.redis.hget(self.ckpt, "next")
        return int(raw) if raw else 0

    def due(self, now: float, limit: int) -> list[str]:
        """Return up to ``limit`` deferred fields whose time has come."""
        return [_text(f) or "" for f in self.redis.zrangebyscore(self.deferred, "-inf", now, start=0, num=limit)]

    def picked_up(self) -> list[str]:
        """Return the deferred fields a previous attempt picked up (pending) but did not record.

        All at once: they leave the queue as they are recorded, so paging by offset would skip some.
        """
        return [_text(f) or "" for f in self.redis.zrangebyscore(self.deferred, "+inf", "+inf")]

    def pending_count(self) -> int:
        """Return how many entries are pending (handed to a send whose outcome is not recorded)."""
        return int(self.redis.hget(self.stats, "#pending") or 0)

    def pending_fields(self, count: int = 1000) -> list[str]:
        """Return every pending entry's field (a scan of the ledger: only for the orphan sweep)."""
        return [_text(f) or "" for f, v in self.redis.hscan_iter(self.ledger, count=count) if v == b"p"]

    def forget_deferred(self, fields: Sequence[str]) -> None:
        """Drop queue members whose ledger entry is already final (keeps the queue honest)."""
        if fields:
            self.redis.zrem(self.deferred, *fields)

    def waiting(self) -> tuple[int, float | None]:
        """Return (deferred messages, earliest due time) of the shard."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.deferred, "-inf", "(+inf")
        pipe.zrangebyscore(self.deferred, "-inf", "(+inf", start=0, num=1, withscores=True)
        n, first = pipe.execute()
        return int(n), (float(first[0][1]) if first else None)

    def totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Return (outcome counts, failure reasons, checkpoint counters), cumulative over attempts."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.stats)
        pipe.hgetall(self.ckpt)
        stats, ckpt = pipe.execute()
        counts: dict[str, int] = {}
        failures: dict[str, int] = {}
        extra: dict[str, int] = {}
        for k, v in stats.items():
            key, n = _text(k) or "", int(v)
            if key.startswith("!"):
                failures[key[1:]] = n
            elif key.startswith("#"):
                extra[key[1:]] = n
            elif n:
                counts[key] = n
        for k, v in ckpt.items():
            key = _text(k) or ""
            if "|" in key:
                counts[key] = counts.get(key, 0) + int(v)
            else:
                extra[key] = int(v)
        return counts, failures, extra

