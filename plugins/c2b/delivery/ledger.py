"""The delivery ledger of one shard: what happened to every (touch, uid), kept exactly once.

Keys (all share the shard's hash tag, so every script below touches a single cluster slot)::

    c2b:{<plan>:<run>:<shard>}:ledger    HASH    "<touch>|<uid>" -> state, only while not final (p, d)
    c2b:{<plan>:<run>:<shard>}:out:<b>   STRING  final outcomes, fixed-width records (uid key, code per touch)
    c2b:{<plan>:<run>:<shard>}:codes     HASH    the outcome records' layout: buckets, touch slots, state codes
    c2b:{<plan>:<run>:<shard>}:stats     HASH    "<variant>|<touch>|<outcome>" -> messages, "!<reason>" -> failures
    c2b:{<plan>:<run>:<shard>}:deferred  ZSET    "<touch>|<uid>" parked for quiet hours, score = due (epoch s);
                                                 +inf once picked up (pending), removed when final
    c2b:{<plan>:<run>:<shard>}:ckpt      HASH    next (first rank not done), users, pages, "<variant>|-|holdout"

States: ``p`` pending (about to be sent, or in flight), ``s`` sent, ``f:<reason>`` failed for good,
``c`` capped (frequency cap), ``x`` expired (the plan's window closed before the user's hours
opened), ``d`` deferred (quiet hours). Only ``p`` is re-sent by a retry; ``s``, ``f``, ``c``, ``x``
are final. The stats' ``#pending`` counts the ``p`` entries, so a shard can tell in one read whether
anything is still unaccounted for.

Why two places (no big keys, a few bytes per user; ``docs/delivery-guarantees.md``): an entry
lives in the ``ledger`` hash only while it can still change (pending or deferred), so the hash
holds about the in-flight window, not the shard. The script that makes an entry final moves it,
in the same atomic call, into an *outcome record*: the uid's 8-byte key (a canonical integer uid
is its own int64, any other uid its 8-byte BLAKE2b) followed by one code byte per touch slot, in
one of ``2^k`` bucket strings chosen by the key (``k`` fixed per shard from its size, about 100
records a bucket: strings of about 1 KB). A state code names a state in ``codes`` (``s``,
``c``, ``f:<reason>``...: 255 at most per shard) and a touch slot a touch name (as many as the
plan has). A state that does not fit (a 256th distinct failure reason, a touch the shard's
layout has no slot for) simply stays in the hash: the layout is an encoding, never a limit.
Every read and every state change looks in the hash first and then in the record, inside the
same script, so the exactly-once rules below hold whichever of the two holds the entry.

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
from typing import Any

from c2b.delivery.records import uid_key
from c2b.store.shards import ShardKeys, read_layout

PENDING, SENT, DEFERRED, CAPPED, EXPIRED = "p", "s", "d", "c", "x"
LEDGER_TTL = 7 * 24 * 3600
RECORDS_PER_BUCKET = 96  # target; the bucket count is a power of two chosen from the shard's size
MAX_BUCKETS = 8192
DEFAULT_SLOTS = 4  # touch slots of a ledger whose caller did not name the plan's touches

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
local function seal(bkey, k8, f, st)
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
  local f, st, vt, outcome, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
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
  local f, st, vt, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ok = 0
  if redis.call('HGET', KEYS[1], f) == 'p' then
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

# KEYS: codes. ARGV: buckets, touch slots, ttl. Fixes the shard's record layout once (the first
# caller's proposal wins; every later one reads it back).
_LAYOUT = """
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


def bucket_count(members: int) -> int:
    """Return the outcome buckets of a shard of ``members`` users (a power of two)."""
    want = max(1, -(-members // RECORDS_PER_BUCKET))
    return min(MAX_BUCKETS, 1 << (want - 1).bit_length())


@dataclass(frozen=True)
class Change:
    """A ledger state change of one message, with the counter it moves."""

    field: str
    state: str
    variant_touch: str
    outcome: str
    due: float = 0.0


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


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
        self._answered = ""  # receipt of the last prepare call whose answer arrived
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

    def states(self, fields: Sequence[str]) -> list[str | None]:
        """Return the current state of each ledger field (``None``: never seen)."""
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
        return out

    def prepare(self, changes: Sequence[Change], receipt: str | None = None) -> list[bool]:
        """Apply changes to new/deferred entries (and pending -> deferred); return which applied.

        ``receipt`` names this logical call (:meth:`new_receipt`): pass the same one when retrying
        it, so a call that ran but whose answer was lost gets its own answer back.
        """
        if not changes:
            return []
        receipt = receipt or self.new_receipt()
        args: list[Any] = [self.ttl, RECEIPT_TTL, receipt, self._answered]
        keys, where = self._locate([c.field for c in changes], create=True)
        for c, (b, k8) in zip(changes, where, strict=True):
            args += [c.field, c.state, c.variant_touch, c.outcome, f"{c.due:.0f}", b, k8]
        applied = [bool(x) for x in self._prepare(keys=keys, args=args)]
        self._answered = receipt
        return applied

    @staticmethod
    def new_receipt() -> str:
        return uuid.uuid4().hex

    def finalize(self, pipe: Any, changes: Sequence[Change]) -> None:
        """Queue on ``pipe`` (or run, on a cluster): pending -> final state (sent or failed)."""
        if not changes:
            return
        args: list[Any] = [self.ttl]
        keys, where = self._locate([c.field for c in changes], create=True)
        for c, (b, k8) in zip(changes, where, strict=True):
            args += [c.field, c.state, c.variant_touch, c.outcome, b, k8]
        self._finalize(keys=keys, args=args, client=pipe if self.pipelined_scripts else self.redis)

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

