"""Frequency caps: at most N touches per user per local day and per local week, in total and per
channel, counted across every plan of one business line.

**Scope.** Counts are kept per business line (its ``line.yaml`` says the caps, see
docs/business-lines.md): the plans of line ``growth`` count their touches in the line's counters and
are capped by them; another line's plans never count against ``growth``. Plans outside any line
share one scope of their own (``-``), where ``delivery.frequency_cap`` works as it always did. What a
plan obeys is its :class:`CapRules`: the line's caps, with the plan's own ``delivery.frequency_cap``
as a stricter daily cap (see :func:`c2b.plan.lines.cap_rules`).

**Windows.** The day is the user's local day (``YYYYMMDD``, see
:mod:`c2b.delivery.controls.quiet_hours`); the week is the ISO week (Monday to Sunday) of that day.

**Keys** (no big keys, cluster-safe), per scope, ``bucket = shard_index(uid, 2048)``, ``sub`` =
the next 5 bits of the same murmur3 hash (0..31, independent of the bucket), ``q = sub % 4``::

    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>          level 0: HASH uid -> "<touches>[;<channel>=<touches>...]"
    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>:q<q>     level 2: the same, 4 a bucket-day
    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>:<sub>    level 5: the same, 32 a bucket-day
    c2b:fcap:{<scope>:<bucket>}:<YYYY>W<ww>[:...]   the same three levels for the ISO week (only for week caps)
    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>:rcpt     HASH receipt -> answer (replays, see below)

A user has one field per level that holds it however many channels are capped: the per-channel
counts ride in the field's value, and only the channels the line caps are counted (a line with no
week cap keeps no week keys). **A bucket-day grows by levels**: its users go into the level-0 key until it holds
``LEVEL0_FIELDS`` (448) users, then into their quarter's key (level 2) until that holds
``LEVEL2_FIELDS`` (256), then into their sub-key (level 5). A user's counts are the sum of its
fields along its path (one field, mostly); a capped write keeps them in the first key of the path
that holds them. Why: a Redis key costs ~150 bytes before its first field (with its expiry entry
and Redis's tables), and a hash stays a compact *listpack* (~10 bytes a field) only up to
``hash-max-listpack-entries`` fields (512 by default); past it, ~80 bytes a field. One fixed layout
cannot serve every audience: 32 sub-keys a bucket-day (the layout before, 65,536 keys a scope-day)
kept 14.6 bytes per member after a 10M-user run but 27.9 after a 1M-user one (~15 users a key);
one hash a bucket-day turns into a hash table past ~1M users. Growing by levels, a bucket-day is 1
key up to 448 users (~900k users of a line a day), 5 keys up to 1,472 (~3M), then 5 + up to 32
(at 10M users, ~105 users a sub-key); the fullest sub-key passes 512 at ~30M users of a line a day.
A listpack's reads and writes scan it: on this machine an ``HGET`` in 448 fields costs ~3.2 us,
in 256 ~1.8, in 150 ~1.3; hence 448 only at level 0 (what a line's users of a day up to ~900k
fill) and 256 below. Every key of a bucket shares the hash tag
``{<scope>:<bucket>}``: one slot, so one script still takes a bucket-day's keys and its receipts at
once on Redis Cluster. A key gets its TTL with its first field: a day key expires 15 hours after
the day ends in UTC (the last local day on Earth, UTC-12, ends 12 hours later), a week key 15
hours after its Sunday: just past the window.

**Upgrade** from the layouts before: one hash per bucket-day (``...}:<YYYYMMDD>``) is level 0
now, and 32 sub-keys a bucket-day (``...}:<YYYYMMDD>:<sub>``) level 5: their counts are where the
readers look. With 64 sub-keys a bucket-day (before 2026-11-28), a user of sub-key ``j`` sat in
``j`` (level 5 now) or in ``j + 32``, its *partner*, which is read while it exists (one ``EXISTS``
of the call's partners per call): the script adds a user's counts there and moves them on the
user's next capped write; a plan without caps counts where it counts now, the old counts adding up.
Nothing is counted twice or lost; the old keys expire by themselves (day keys within two days, week
keys within nine).

**Exactness.** A capped plan takes a slot *before* the send and gives it back when the send fails
for good. Both are one script per (scope, bucket, day) that checks every cap and moves every count
of the touch together, so of two shards racing for a user's last slot exactly one gets it. The
scripts of one call are pipelined (one round trip; on Redis Cluster one per node, see
:mod:`c2b.store.script_pipelines`). A worker killed between taking the slot and recording the
message leaves the slot taken: the user may get one touch fewer, never one more. Plans of a scope
without any cap only count their sends, after sending: one ``HINCRBY`` per send (into the first
level with room, no look for the user's field higher up), in one script call per flush on a plain
Redis (:meth:`FrequencyCap._count`, receipt-guarded like the others).

**Replays** are safe: when Redis stops right after running a call, the client cannot tell and sends
it again. Each call carries a receipt, and the bucket's receipts hash (``...:rcpt``, same slot)
keeps the answer, so a replay gets the first answer back instead of counting the touches twice
(which would cap a user early, or, for a give-back, let one touch too many through). A caller drops
its previous receipt on its next call to the bucket, so the hash holds about one receipt per
running shard.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from c2b.hashing import murmur3_32, uid_bytes
from c2b.store.script_pipelines import run_scripts

BUCKETS = 2048
SUBKEYS = 32  # level-5 keys (sub-keys) per bucket-day (and bucket-week)
QUARTERS = 4  # level-2 keys per bucket-day: quarter q holds users of the sub-keys j with j % 4 == q
LEVEL0_FIELDS = 448  # a level-0 key takes new users while it has fewer fields than this
LEVEL2_FIELDS = 256  # a level-2 key likewise
SUBKEYS_BEFORE = 64  # the layout before: a user of sub-key j sat in j or j + 32 (its partner), still read
NO_LINE = "-"  # the scope of plans outside any business line (line names are [a-z][a-z0-9_]+)
RECEIPT_TTL = 3600
PAST_WINDOW = timedelta(hours=15)  # UTC-12 ends a day 12 hours after UTC does; 3 hours to spare
MIN_TTL = 3600  # a count written for a day already over (a test's fixed day, a skewed clock) lives an hour


@dataclass(frozen=True)
class ChannelCap:
    """One channel's caps within a scope (``None``: that window is not capped, nor counted)."""

    per_day: int | None = None
    per_week: int | None = None


@dataclass(frozen=True)
class CapRules:
    """What one plan obeys: where its touches are counted and the caps it checks them against.

    ``per_day`` is the plan's daily cap (the stricter of its line's and its own); ``per_week`` and
    ``per_channel`` are its line's. ``None`` everywhere: the plan only counts its sends.
    """

    scope: str = NO_LINE
    per_day: int | None = None
    per_week: int | None = None
    per_channel: tuple[tuple[str, ChannelCap], ...] = ()

    @property
    def capped(self) -> bool:
        """Whether any cap applies (then slots are taken before sending, not counted after)."""
        return self.per_day is not None or self.per_week is not None or any(
            c.per_day is not None or c.per_week is not None for _, c in self.per_channel)

    def describe(self) -> str:
        """Return the caps in a few words, e.g. ``3/day, 10/week; sms 1/day`` (``none`` when none)."""
        def windows(day: int | None, week: int | None) -> str:
            return ", ".join(f"{n}/{w}" for n, w in ((day, "day"), (week, "week")) if n is not None)

        parts = [windows(self.per_day, self.per_week)] if self.capped else []
        parts += [f"{ch} {windows(c.per_day, c.per_week)}" for ch, c in self.per_channel]
        return "; ".join(p for p in parts if p) or "none"


# KEYS: receipts (of that bucket-day: one call per bucket-day, so a receipt answers one call), the
# bucket's level-0 day and week keys, its 4 level-2 day keys (quarters 0..3), then, when the week is
# counted, its 4 level-2 week keys; then the call's n day sub-keys (level 5), then (week counted)
# its week sub-keys in the same order, then the partners of those day (and week) sub-keys in the
# same order (sub-key j + 32 of the layout with 64 sub-keys, whose users now count in j: read,
# merged and emptied while they exist). ARGV: receipt, previous receipt, day ttl, week ttl, receipt
# ttl, day cap (-1: none; the day total is always counted), week cap (-1: none, not counted),
# channel caps "<ch>:<day cap>:<week cap>;..." (-1: not counted), n sub-keys, LEVEL0_FIELDS,
# LEVEL2_FIELDS, then (uid, channel, touches, j, q) x asks, j the 1-based index of the ask's sub-key among the n and q
# its quarter + 1; touches < 0 gives back. Returns per ask "<granted>" or "<granted> <cap that
# stopped it>". A field's value is "<total>[;<channel>=<n>...]". A key gets its TTL when a field is
# added to it (a key is created with its first field; a key's TTL is the end of its window, the
# same for every caller), not on every call.
_TAKE = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then
  local out = {}
  for s in string.gmatch(done, '[^,]+') do out[#out + 1] = s end
  return out
end
local daycap, weekcap = tonumber(ARGV[6]), tonumber(ARGV[7])
local rules = {}
local useweek = weekcap >= 0
for ch, d, w in string.gmatch(ARGV[8], '([^:;]+):(%-?%d+):(%-?%d+)') do
  rules[ch] = {tonumber(d), tonumber(w)}
  if tonumber(w) >= 0 then useweek = true end
end
local nsub, full0, full2 = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local wq = 7  -- KEYS[wq + q]: the week's quarter q (1-based), when the week is counted
local d5 = useweek and 11 or 7  -- KEYS[d5 + j]: the call's day sub-key j
local w5 = d5 + nsub  -- KEYS[w5 + j]: its week sub-key
local pbase = d5 + nsub + (useweek and nsub or 0)  -- KEYS[pbase + j]: sub-key j's 64-sub-key partner
local partners = false  -- any 64-sub-key partner left: rare, gone within days (weeks: 8 days)
if #KEYS > pbase and redis.call('EXISTS', unpack(KEYS, pbase + 1, #KEYS)) > 0 then partners = true end
local lens = {}
local function open(key, full)  -- whether a level-0 or level-2 key takes new users (fewer fields than full)
  local n = lens[key]
  if not n then n = redis.call('HLEN', key); lens[key] = n end
  return n < full
end
local nocap = {-1, -1}
local NAMES = {'per_day', 'per_week'}
local function parse(v, c)
  local i = string.find(v, ';', 1, true)
  if not i then return tonumber(v) end
  for ch, n in string.gmatch(string.sub(v, i), ';([^=;]+)=(%d+)') do c[ch] = (c[ch] or 0) + tonumber(n) end
  return tonumber(string.sub(v, 1, i - 1))
end
-- A user's counts of a window: the sum of its fields along its path (level 0, 2, 5, and the
-- 64-sub-key partner while one is left). Returns the total, per channel, and the keys holding one.
local function load(path, uid)
  local c, t, held = {}, 0, {}
  for _, key in ipairs(path) do
    local v = redis.call('HGET', key, uid)
    if v then t = t + parse(v, c); held[#held + 1] = key end
  end
  return t, c, held
end
local fresh = {}  -- keys that got a new field: they may be new, so they get their TTL
-- Where a user's counts go: the first key of its path holding them, else the first of level 0
-- and 2 that takes new users, else its sub-key (level 5); the partner is only read.
local function home(path, held)
  if held[1] and held[1] ~= path[4] then return held[1] end
  if open(path[1], full0) then return path[1] end
  if open(path[2], full2) then return path[2] end
  return path[3]
end
local function save(path, held, uid, total, c, ttl)
  local parts, any = {tostring(total)}, total > 0
  for ch, n in pairs(c) do
    if n > 0 then parts[#parts + 1] = ch .. '=' .. n; any = true end
  end
  local key = nil
  if any then
    key = home(path, held)
    if redis.call('HSET', key, uid, table.concat(parts, ';')) == 1 then
      fresh[key] = ttl
      if lens[key] then lens[key] = lens[key] + 1 end
    end
  end
  for _, o in ipairs(held) do
    if o ~= key and redis.call('HDEL', o, uid) == 1 and lens[o] then lens[o] = lens[o] - 1 end
  end
end
local dayttl, weekttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 12, #ARGV, 5 do
  local uid, ch, n, j, q = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local dpath = {KEYS[2], KEYS[3 + q], KEYS[d5 + j]}
  if partners then dpath[4] = KEYS[pbase + j] end
  local rule = rules[ch] or nocap
  local dt, dc, dheld = load(dpath, uid)
  local wpath, wt, wc, wheld = nil, 0, {}, {}
  if useweek then
    wpath = {KEYS[3], KEYS[wq + q], KEYS[w5 + j]}
    if partners then wpath[4] = KEYS[pbase + nsub + j] end
    wt, wc, wheld = load(wpath, uid)
  end
  local g, why = n, 0
  if n > 0 then
    local caps = {daycap, weekcap, rule[1], rule[2]}
    local used = {dt, wt, dc[ch] or 0, wc[ch] or 0}
    for k = 1, 4 do
      if caps[k] >= 0 and caps[k] - used[k] < g then g = math.max(0, caps[k] - used[k]); why = k end
    end
  end
  if g ~= 0 then
    if rule[1] >= 0 then dc[ch] = math.max(0, (dc[ch] or 0) + g) end
    save(dpath, dheld, uid, math.max(0, dt + g), dc, dayttl)
    if useweek then
      if weekcap >= 0 then wt = math.max(0, wt + g) end
      if rule[2] >= 0 then wc[ch] = math.max(0, (wc[ch] or 0) + g) end
      save(wpath, wheld, uid, wt, wc, weekttl)
    end
  end
  if why == 0 then out[#out + 1] = tostring(g)
  elseif why <= 2 then out[#out + 1] = g .. ' ' .. NAMES[why]
  else out[#out + 1] = g .. ' ' .. ch .. '.' .. NAMES[why - 2] end
end
for key, ttl in pairs(fresh) do redis.call('EXPIRE', key, ttl) end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(out, ','))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return out
"""


# Counting only (a plan without caps, standalone Redis): KEYS[1] the scope's count receipts; ARGV:
# receipt, previous receipt, receipt ttl, the scope's key prefix (``c2b:fcap:{<scope>:``),
# LEVEL0_FIELDS, LEVEL2_FIELDS, then per day its keys' ttl and its asks as one string of lines
# ``<bucket>}:<day> <quarter> <sub> <start> <uid> <touches>``, start the first level that may take
# the user (0, 2 or 5: the caller remembers which levels it found full; see FrequencyCap._count).
# (Uids hold no whitespace: the extract refuses such uids, and the caller checks.) One string per
# day instead of six arguments per ask: the client packs (and Redis parses) a few arguments a
# call, not hundreds. A count goes into the first level from ``start`` that takes new users, with
# no look for the user's field higher up: a user counted at level 0 before it filled and again
# after has a field at both, which add up (at most the key's full count of such users; a capped write
# merges them). Returns one character per ask, in order: the level counted into, or 'x' when its
# field is not an integer (the script above wrote per-channel counts there): the caller counts
# those through _TAKE. A replay (same receipt) gets the first answer back and counts nothing again.
# The keys are named by the script, not passed as KEYS: this path runs on a plain Redis only.
_COUNT = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return done end
local prefix, full0, full2 = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {}
local fresh = {}
local lens = {}
local function open(key, full)
  local n = lens[key]
  if not n then n = redis.call('HLEN', key); lens[key] = n end
  return n < full
end
for g = 7, #ARGV, 2 do
  local ttl = ARGV[g]
  for root, q, sub, start, uid, n in string.gmatch(ARGV[g + 1], '(%S+) (%d) (%d+) (%d) (%S+) (%d+)\\n') do
    root = prefix .. root
    local key, level = nil, start
    if start == '0' then
      if open(root, full0) then key = root else level = '2' end
    end
    if not key and level == '2' then
      key = root .. ':q' .. q
      if not open(key, full2) then key = nil; level = '5' end
    end
    if not key then key = root .. ':' .. sub end
    local r = redis.pcall('HINCRBY', key, uid, n)
    if type(r) == 'table' and r.err then out[#out + 1] = 'x' else
      out[#out + 1] = level
      if r == tonumber(n) then  -- a new field (a count is never 0)
        fresh[key] = ttl
        if lens[key] then lens[key] = lens[key] + 1 end
      end
    end
  end
end
for key, ttl in pairs(fresh) do redis.call('EXPIRE', key, ttl) end
local answer = table.concat(out)
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('HSET', KEYS[1], ARGV[1], answer)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return answer
"""


@lru_cache(maxsize=64)
def week_of(day: str) -> str:
    """Return the ISO week of a ``YYYYMMDD`` day as ``YYYYWww`` (``20261127`` -> ``2026W48``)."""
    year, week, _ = _date(day).isocalendar()
    return f"{year}W{week:02d}"


def _date(day: str) -> date:
    return date(int(day[:4]), int(day[4:6]), int(day[6:8]))


@lru_cache(maxsize=64)
def _expire_at(day: str) -> tuple[int, int]:
    """Return when the day's and its week's keys may go (epoch seconds): just past the window."""
    start = datetime.combine(_date(day), datetime.min.time(), UTC)
    monday = start - timedelta(days=start.weekday())
    return (int((start + timedelta(days=1) + PAST_WINDOW).timestamp()),
            int((monday + timedelta(days=7) + PAST_WINDOW).timestamp()))


def fcap_place(uid: str) -> tuple[int, int]:
    """Return ``uid``'s bucket (``shard_index(uid, BUCKETS)``, 1-based) and sub-key (0-based).

    One murmur3 hash: the bucket is its low bits (as :func:`c2b.hashing.shard_index`), the sub-key
    the next 5 bits (``SUBKEYS`` = 32), independent of the bucket; the quarter (level 2) is the
    sub-key's low 2 bits.
    """
    h = abs(murmur3_32(uid_bytes(uid)))
    return (h & (BUCKETS - 1)) + 1, (h >> 11) & (SUBKEYS - 1)


def fcap_prefix(scope: str, uid: str) -> str:
    """Return the key prefix (hash tag included) of ``uid``'s counts in ``scope``."""
    return "c2b:fcap:{" + f"{scope}:{fcap_place(uid)[0]}" + "}"


def fcap_path(scope: str, window: str, uid: str) -> tuple[str, str, str]:
    """Return the keys that may hold ``uid``'s counts of ``window`` (a ``YYYYMMDD`` day or a
    ``YYYYWww`` week) in ``scope``: its bucket's level-0 key, its quarter's (level 2), its sub-key
    (level 5). Its counts are the sum of its fields there (one, mostly)."""
    bucket, sub = fcap_place(uid)
    prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}:" + window
    return prefix, f"{prefix}:q{sub % QUARTERS}", f"{prefix}:{sub}"


def fcap_receipts(scope: str, day: str, uid: str) -> str:
    """Return the key of the receipts of the calls that count ``uid``'s bucket-day in ``scope``."""
    return fcap_prefix(scope, uid) + f":{day}:rcpt"


def partner_fcap_keys(scope: str, day: str, uid: str) -> tuple[str, str]:
    """Return the day and week keys that held ``uid``'s counts in the layout with 64 sub-keys, when
    that was not its sub-key now (sub-key ``j`` then held the users of ``j`` and of ``j + 32``, its
    partner); still read until they expire."""
    bucket, sub = fcap_place(uid)
    prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}"
    return f"{prefix}:{day}:{sub + SUBKEYS}", f"{prefix}:{week_of(day)}:{sub + SUBKEYS}"


def _arg(cap: int | None) -> int:
    return -1 if cap is None else cap


class FrequencyCap:
    """Take and give back per-user touch slots under a plan's :class:`CapRules`.

    ``rules`` may be an int (a daily cap outside any line) or ``None`` (count only, outside any
    line). One instance per thread: it remembers its last receipt per bucket.
    """

    def __init__(self, redis: Any, rules: CapRules | int | None) -> None:
        self.redis = redis
        self.rules = rules if isinstance(rules, CapRules) else CapRules(per_day=rules)
        r = self.rules
        self._caps = [_arg(r.per_day), _arg(r.per_week),
                      ";".join(f"{ch}:{_arg(c.per_day)}:{_arg(c.per_week)}" for ch, c in r.per_channel)]
        # Whether the week is counted (else the script is given no week sub-keys).
        self._week = r.per_week is not None or any(c.per_week is not None for _, c in r.per_channel)
        self._script = redis.register_script(_TAKE)
        self._counter = redis.register_script(_COUNT)
        self._answered: dict[str, str] = {}  # receipts key of a (scope, bucket, day) -> our last answered receipt
        # What this instance found full (see _COUNT): (bucket, day) of level-0 keys, (bucket, day,
        # quarter) of level-2 keys; its counts start below them. A key that empties again is still
        # skipped: the counts land a level lower, which readers sum anyway.
        self._full_roots: set[tuple[int, str]] = set()
        self._full_quarters: set[tuple[int, str, int]] = set()

    @staticmethod
    def new_receipt() -> str:
        return uuid.uuid4().hex

    def take_each(self, touches: Sequence[tuple[str, str, str]], receipt: str | None = None) -> list[str | None]:
        """Take one slot per ``(day, uid, channel)``, in order; return per touch ``None`` when it
        got its slot, else the cap that refused it (``per_day``, ``per_week``, ``sms.per_week``...).

        Earlier touches of a user take the user's remaining slots first. Pass the same ``receipt``
        (:meth:`new_receipt`) when retrying a call whose outcome is unknown.
        """
        answers = self._move([(d, u, ch, 1) for d, u, ch in touches], receipt)
        return [None if g > 0 else why for g, why in answers]

    def take(self, wants: Iterable[tuple[str, str, int] | tuple[str, str, str, int]],
             receipt: str | None = None) -> dict[tuple[str, str], int]:
        """Take slots for ``(day, uid, touches)`` or ``(day, uid, channel, touches)``; return the
        touches granted per (day, uid)."""
        asks = [(w[0], w[1], str(w[2]), int(w[3])) if len(w) == 4 else (w[0], w[1], "", int(w[2])) for w in wants]
        asks = [a for a in asks if a[3] > 0]
        granted: dict[tuple[str, str], int] = defaultdict(int)
        if not self.rules.capped:
            for day, uid, _, n in self._count(asks, receipt):
                granted[(day, uid)] += n
            return dict(granted)
        for (day, uid, _, _), (g, _) in zip(asks, self._move(asks, receipt), strict=True):
            granted[(day, uid)] += g
        return dict(granted)

    def count_sends(self, touches: Sequence[tuple[str, str, str]], receipt: str | None = None) -> None:
        """Take one slot per ``(day, uid, channel)`` as :meth:`take` does, without its answer: how a
        plan without caps counts its sends (for the capped plans of its scope) after recording them."""
        asks = [(day, uid, channel, 1) for day, uid, channel in touches]
        if self.rules.capped:
            self._move(asks, receipt)
        elif asks:
            self._count(asks, receipt)

    def _count(self, asks: list[tuple[str, str, str, int]], receipt: str | None) -> list[tuple[str, str, str, int]]:
        """Count the sends of a plan without caps: ``HINCRBY`` of each user's day total.

        A plan without caps needs no answer and no check, only the count (for capped plans of its
        scope), and a scope without caps counts only day totals, so on a plain Redis one script
        call for the whole flush does what :data:`_TAKE` did with one call per bucket (about 60 us
        of CPU a message, Redis and client together, at 50k users). Like it, the call leaves a
        receipt (in the scope's ``c2b:fcap:{<scope>:counts}:rcpt`` hash), so a replay after a lost reply counts
        nothing twice. A field the script wrote with per-channel counts (a line whose caps were
        removed today) is not an integer: those asks go through :data:`_TAKE`. On Redis Cluster
        (a script's keys must share a slot) the counts take :data:`_TAKE`'s path, per bucket.
        """
        receipt = receipt or self.new_receipt()
        if hasattr(self.redis, "get_node_from_key"):
            self._move(asks, receipt)
            return asks
        now = int(time.time())
        lines: dict[str, list[str]] = {}  # day -> its asks' lines (see _COUNT)
        order: list[int] = []  # ask indexes in the order the script answers (day by day)
        by_day: dict[str, list[int]] = {}
        places: list[tuple[int, int]] = []  # per ask, its (bucket, sub-key)
        full_roots, full_quarters = self._full_roots, self._full_quarters
        for i, (day, uid, _, n) in enumerate(asks):
            bucket, sub = fcap_place(uid)
            places.append((bucket, sub))
            q = sub % QUARTERS
            start = 5 if (bucket, day, q) in full_quarters else 2 if (bucket, day) in full_roots else 0
            text = lines.get(day)
            if text is None:
                text = lines[day] = []
                by_day[day] = []
            text.append(f"{bucket}}}:{day} {q} {sub} {start} {uid} {n}\n")
            by_day[day].append(i)
        args: list[Any] = []
        for day, text in lines.items():
            blob = "".join(text)
            # Each line has exactly five spaces and one newline unless a uid holds whitespace (or is
            # empty: two spaces in a row); such uids take the general path.
            if blob.count(" ") != 5 * len(text) or blob.count("\n") != len(text) or "  " in blob:
                self._move(asks, receipt)
                return asks
            args += [max(MIN_TTL, _expire_at(day)[0] - now), blob]
            order += by_day[day]
        receipts = "c2b:fcap:{" + self.rules.scope + ":counts}:rcpt"
        answer = self._counter(keys=[receipts], args=[
            receipt, self._answered.get(receipts, ""), RECEIPT_TTL, "c2b:fcap:{" + self.rules.scope + ":",
            LEVEL0_FIELDS, LEVEL2_FIELDS, *args])
        self._answered[receipts] = receipt
        answered = answer.decode() if isinstance(answer, bytes) else str(answer)
        if len(full_quarters) > 200_000:
            full_roots.clear()
            full_quarters.clear()
        redo = []
        for i, level in zip(order, answered, strict=True):
            if level == "x":
                redo.append(asks[i])
            elif level != "0":  # level 0 was full: remember it, and level 2 when that was too
                bucket, sub = places[i]
                full_roots.add((bucket, asks[i][0]))
                if level == "5":
                    full_quarters.add((bucket, asks[i][0], sub % QUARTERS))
        if redo:
            self._move(redo, receipt + ":redo")
        return asks

    def give_back(self, items: Iterable[tuple[str, ...]], receipt: str | None = None) -> None:
        """Return one slot per ``(day, uid)`` or ``(day, uid, channel)`` (a send that failed for good
        reached nobody)."""
        self._move([(i[0], i[1], i[2] if len(i) > 2 else "", -1) for i in items], receipt)

    def _move(self, asks: list[tuple[str, str, str, int]], receipt: str | None) -> list[tuple[int, str | None]]:
        if not asks:
            return []
        receipt = receipt or self.new_receipt()
        scope = self.rules.scope
        # One script call per (bucket, day): its receipts key -> (prefix, day, sub-keys -> their
        # 1-based index, the asks with their sub-key's index).
        by_call: dict[str, tuple[str, str, dict[int, int], list[tuple[int, int, int]]]] = {}
        for i, (day, uid, _, _) in enumerate(asks):
            bucket, sub = fcap_place(uid)
            prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}"
            rcpt = f"{prefix}:{day}:rcpt"
            call = by_call.get(rcpt)
            if call is None:
                call = by_call[rcpt] = (prefix, day, {}, [])
            subs = call[2]
            j = subs.get(sub)
            if j is None:
                j = subs[sub] = len(subs) + 1
            call[3].append((i, j, sub % QUARTERS + 1))
        calls = []
        sha = self._script.sha
        now = int(time.time())
        quarters = range(QUARTERS)
        for rcpt, (prefix, day, subs, idx) in by_call.items():
            week = week_of(day)
            keys = [rcpt, f"{prefix}:{day}", f"{prefix}:{week}", *(f"{prefix}:{day}:q{q}" for q in quarters)]
            if self._week:
                keys += [f"{prefix}:{week}:q{q}" for q in quarters]
            keys += [f"{prefix}:{day}:{sub}" for sub in subs]
            if self._week:
                keys += [f"{prefix}:{week}:{sub}" for sub in subs]
            keys += [f"{prefix}:{day}:{sub + SUBKEYS}" for sub in subs]  # the 64-sub-key layout's partners
            if self._week:
                keys += [f"{prefix}:{week}:{sub + SUBKEYS}" for sub in subs]
            day_ttl, week_ttl = (max(MIN_TTL, at - now) for at in _expire_at(day))
            args: list[Any] = [receipt, self._answered.get(rcpt, ""), day_ttl, week_ttl, RECEIPT_TTL, *self._caps,
                               len(subs), LEVEL0_FIELDS, LEVEL2_FIELDS]
            for i, j, q in idx:
                _, uid, ch, n = asks[i]
                args += [uid, ch, n, j, q]
            # Plain EVALSHA: redis-py's script objects make a pipeline ask SCRIPT EXISTS first, a
            # round trip per call.
            calls.append((rcpt, lambda pipe, keys=keys, args=args: pipe.evalsha(sha, len(keys), *keys, *args)))
        try:
            answers = run_scripts(self.redis, calls)
        except Exception as exc:
            from redis.exceptions import NoScriptError

            if not isinstance(exc, NoScriptError):
                raise
            # A server lost its script cache (restart, failover): load it and run the call again.
            # Safe: the buckets that did run it answer from their receipts.
            self.redis.script_load(_TAKE)
            answers = run_scripts(self.redis, calls)
        out: list[tuple[int, str | None]] = [(0, None)] * len(asks)
        for (rcpt, (_, _, _, idx)), answer in zip(by_call.items(), answers, strict=True):
            self._answered[rcpt] = receipt
            for (i, _, _), a in zip(idx, answer, strict=True):
                text = a.decode() if isinstance(a, bytes) else str(a)
                g, _, why = text.partition(" ")
                out[i] = (int(g), why or None)
        if len(self._answered) > 100_000:
            self._answered.clear()
        return out

    def count(self, day: str, uid: str, channel: str | None = None, week: bool = False) -> int:
        """Return the touches ``uid`` got on ``day`` (or in its week), in total or on ``channel``
        (for tests and support questions; a window or channel that is not capped is not counted)."""
        partner = partner_fcap_keys(self.rules.scope, day, uid)[1 if week else 0]
        held = 0
        # The user's fields along its path add up (and the 64-sub-key layout's, while it is left).
        for key in (*fcap_path(self.rules.scope, week_of(day) if week else day, uid), partner):
            raw = self.redis.hget(key, uid)
            if raw is None:
                continue
            total, *per = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(";")
            if channel is None:
                held += int(total)
            else:
                held += next((int(n) for ch, _, n in (p.partition("=") for p in per) if ch == channel), 0)
        return held


def rules_of(plan: Any) -> CapRules:
    """Return the caps a plan obeys: its line's (set by :func:`c2b.plan.lines.with_line`), or,
    for a plan outside any line, its own ``delivery.frequency_cap`` per day."""
    rules = getattr(plan, "_cap_rules", None)
    if isinstance(rules, CapRules):
        return rules
    return CapRules(per_day=getattr(plan.delivery, "frequency_cap", None))


def forget_counts(redis: Any, scope: str) -> int:
    """Delete every count of ``scope`` (a line, or ``-``); return how many user-days they held
    (day fields: a user with fields at two levels of a day counts twice, rare).

    For the demo, which runs the same plans on the same users again and again (``c2b demo`` says
    so when it does this); in production the counts are what keeps a line's caps.
    """
    held = 0
    keys = [k for k in redis.scan_iter(match="c2b:fcap:{" + scope + ":*", count=1000)]
    for i in range(0, len(keys), 512):
        pipe = redis.pipeline(transaction=False)
        for key in keys[i:i + 512]:
            pipe.hlen(key)
            pipe.delete(key)
        answers = pipe.execute()
        held += sum(n for key, n in zip(keys[i:i + 512], answers[0::2], strict=True) if _is_day_key(key))
    return held


def _is_day_key(key: bytes | str) -> bool:
    """Whether a counts key holds day counts: ``...}:<YYYYMMDD>``, ``...}:<YYYYMMDD>:q<quarter>`` or
    ``...}:<YYYYMMDD>:<sub>``."""
    parts = (key.decode() if isinstance(key, bytes) else key).rpartition("}:")[2].split(":")
    return len(parts[0]) == 8 and parts[0].isdigit() and (len(parts) == 1 or parts[1].removeprefix("q").isdigit())
