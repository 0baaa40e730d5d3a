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

**Keys** (no big keys, cluster-safe), per scope, ``bucket = shard_index(uid, 2048)`` and ``sub`` =
the next 5 bits of the same murmur3 hash (0..31, independent of the bucket)::

    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>:<sub>  HASH uid -> "<touches>[;<channel>=<touches>...]" that day
    c2b:fcap:{<scope>:<bucket>}:<YYYY>W<ww>:<sub> HASH uid -> the same, that ISO week (only for week caps)
    c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>:rcpt   HASH receipt -> answer (replays, see below)

A user has one field per key however many channels are capped: the per-channel counts ride in the
field's value, and only the channels the line caps are counted (a line with no week cap keeps no
week keys). A bucket-day is split into 32 sub-keys so that each stays a *listpack* (Redis's
compact encoding, up to ``hash-max-listpack-entries``, 512 by default): at 10M users a sub-key
holds about 153 fields (184 at most in the bench's sample), ~10 bytes per user-day all told
(``used_memory``), against 79 when a bucket-day was one ~4,900-field hash table
(``bench/fcap_memory.py``); the fullest sub-key passes 512 fields past ~28M users of a scope in a
day (it then turns into a hash table, ~80 bytes a field). The price is the keys themselves at small
audiences: 2,048 x 32 keys per scope-day, each ~150 bytes before its first user: at 100k users a
day 84 bytes per user-day against 12 for one hash per bucket-day. 64 sub-keys (the layout before)
cost more at every size measured (10.8 / 27.5 / 106.5 bytes at 10M / 1M / 100k users, against 9.8
/ 18.1 / 83.9), and in a 10M-user run on two local days (the demo's users span UTC-8 to UTC+8) left
16.7 bytes per user in Redis against 14.6. Every key of a bucket shares the hash tag
``{<scope>:<bucket>}``: one slot, so one script still takes a bucket-day's sub-keys and its
receipts at once on Redis Cluster. A key gets its TTL with its first field: a day key expires 15
hours after the day ends in UTC (the last local day on Earth, UTC-12, ends 12 hours later), a week
key 15 hours after its Sunday: just past the window.

**Upgrade** from the layouts before, whose keys are read while they exist: one hash per bucket-day
(``...}:<YYYYMMDD>``, ``...}:<YYYY>W<ww>``, no sub; one ``EXISTS`` of both per call), and 64
sub-keys a bucket-day, where a user of sub-key ``j`` now sat in ``j`` (the same key: nothing to
do) or in ``j + 32``, its *partner* (one ``EXISTS`` of the call's partners). The script adds a
user's counts there to the sub-key's and moves them into the sub-key on the user's next capped
write; a plan without caps counts into the sub-key, the old counts adding up
(:meth:`FrequencyCap.count` sums them all). Nothing is counted twice or lost; the old keys expire
by themselves (day keys within two days, week keys within nine).

**Exactness.** A capped plan takes a slot *before* the send and gives it back when the send fails
for good. Both are one script per (scope, bucket, day) that checks every cap and moves every count
of the touch together, so of two shards racing for a user's last slot exactly one gets it. The
scripts of one call are pipelined (one round trip; on Redis Cluster one per node, see
:mod:`c2b.store.script_pipelines`). A worker killed between taking the slot and recording the
message leaves the slot taken: the user may get one touch fewer, never one more. Plans of a scope
without any cap only count their sends, after sending: one ``HINCRBY`` per send, in one script call
per flush on a plain Redis (:meth:`FrequencyCap._count`, receipt-guarded like the others).

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
SUBKEYS = 32  # sub-keys per bucket-day (and bucket-week): ~153 users each at 10M users, a listpack
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


# KEYS: receipts (of that bucket-day: one call per bucket-day, so a receipt answers one call),
# the bucket's old day and week hashes (the layout before sub-keys: read, merged and emptied while
# they exist), then the call's day sub-keys, then (when the week is counted) its week sub-keys in
# the same order, then the partners of those day (and week) sub-keys in the same order (sub-key
# j + 32 of the layout with 64 sub-keys, whose users now count in j: read, merged and emptied while
# they exist, as the old hashes are). ARGV: receipt, previous receipt, day ttl, week ttl, receipt ttl, day cap (-1:
# none; the day total is always counted), week cap (-1: none, not counted), channel caps
# "<ch>:<day cap>:<week cap>;..." (-1: not counted), n sub-keys, then (uid, channel, touches, j) x
# asks, j the 1-based index of the ask's sub-key among the n; touches < 0 gives back. Returns per
# ask "<granted>" or "<granted> <cap that stopped it>". A field's value is
# "<total>[;<channel>=<n>...]". A key gets its TTL when a field is added to it (a key is created
# with its first field; a key's TTL is the end of its window, the same for every caller), not on
# every call.
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
local nsub = tonumber(ARGV[9])
local weeks = (#KEYS - 3) == 4 * nsub  -- the call's week sub-keys (and their partners) were passed
local pbase = 3 + nsub + (weeks and nsub or 0)  -- KEYS[pbase + j]: sub-key j's 64-sub-key partner
local oldday, oldweek = nil, nil
if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then  -- the one-hash layout: rare, gone within days
  if redis.call('EXISTS', KEYS[2]) == 1 then oldday = KEYS[2] end
  if useweek and redis.call('EXISTS', KEYS[3]) == 1 then oldweek = KEYS[3] end
end
local partners = false  -- any 64-sub-key partner left: rare, gone within days (weeks: 8 days)
if #KEYS > pbase and redis.call('EXISTS', unpack(KEYS, pbase + 1, #KEYS)) > 0 then partners = true end
local function olds(old, partner)
  local t = {}
  if old then t[#t + 1] = old end
  if partners and redis.call('EXISTS', partner) == 1 then t[#t + 1] = partner end
  return t
end
local nocap = {-1, -1}
local NAMES = {'per_day', 'per_week'}
local function parse(v, c)
  local i = string.find(v, ';', 1, true)
  if not i then return tonumber(v) end
  for ch, n in string.gmatch(string.sub(v, i), ';([^=;]+)=(%d+)') do c[ch] = (c[ch] or 0) + tonumber(n) end
  return tonumber(string.sub(v, 1, i - 1))
end
local function load(key, old, uid)
  local v = redis.call('HGET', key, uid)
  local c, t, moved = {}, 0, {}
  if v then t = parse(v, c) end
  for _, o in ipairs(old) do
    local ov = redis.call('HGET', o, uid)
    if ov then t = t + parse(ov, c); moved[#moved + 1] = o end
  end
  return t, c, moved
end
local fresh = {}  -- keys that got a new field: they may be new, so they get their TTL
local function save(key, moved, uid, total, c)
  local parts, any = {tostring(total)}, total > 0
  for ch, n in pairs(c) do
    if n > 0 then parts[#parts + 1] = ch .. '=' .. n; any = true end
  end
  if any then
    if redis.call('HSET', key, uid, table.concat(parts, ';')) == 1 then fresh[key] = true end
  else
    redis.call('HDEL', key, uid)
  end
  for _, o in ipairs(moved) do redis.call('HDEL', o, uid) end
end
local out = {}
for i = 10, #ARGV, 4 do
  local uid, ch, n, j = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local dkey, wkey = KEYS[3 + j], KEYS[3 + nsub + j]
  local rule = rules[ch] or nocap
  local dt, dc, dmoved = load(dkey, olds(oldday, KEYS[pbase + j]), uid)
  local wt, wc, wmoved = 0, {}, {}
  if useweek then wt, wc, wmoved = load(wkey, olds(oldweek, KEYS[pbase + nsub + j]), uid) end
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
    save(dkey, dmoved, uid, math.max(0, dt + g), dc)
    if useweek then
      if weekcap >= 0 then wt = math.max(0, wt + g) end
      if rule[2] >= 0 then wc[ch] = math.max(0, (wc[ch] or 0) + g) end
      save(wkey, wmoved, uid, wt, wc)
    end
  end
  if why == 0 then out[#out + 1] = tostring(g)
  elseif why <= 2 then out[#out + 1] = g .. ' ' .. NAMES[why]
  else out[#out + 1] = g .. ' ' .. ch .. '.' .. NAMES[why - 2] end
end
local dayttl, weekttl = tonumber(ARGV[3]), tonumber(ARGV[4])
for k = 1, nsub do
  if fresh[KEYS[3 + k]] then redis.call('EXPIRE', KEYS[3 + k], dayttl) end
  if useweek and fresh[KEYS[3 + nsub + k]] then redis.call('EXPIRE', KEYS[3 + nsub + k], weekttl) end
end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[1], ARGV[2]) end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(out, ','))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return out
"""


# Counting only (a plan without caps, standalone Redis): KEYS[1] the scope's count receipts; ARGV:
# receipt, previous receipt, receipt ttl, the scope's key prefix (``c2b:fcap:{<scope>:``), then per
# day its keys' ttl and its asks as one string of lines ``<bucket>}:<day>:<sub> <uid> <touches>``
# (uids hold no whitespace: the extract refuses such uids, and the caller checks). One string per
# day instead of three arguments per ask: the client packs (and Redis parses) a few arguments a
# call, not hundreds. Returns one character per ask, in order: '0', or '1' when its field is not an
# integer (the script above wrote per-channel counts there): the caller counts those through
# _TAKE. A replay (same receipt) gets the first answer back and counts nothing again. A count the
# old layout holds for the user stays where it is: the two add up (see _TAKE's load, and count()).
# The keys are named by the script, not passed as KEYS: this path runs on a plain Redis only.
_COUNT = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return done end
local prefix = ARGV[4]
local out = {}
local fresh = {}
for g = 5, #ARGV, 2 do
  local ttl = ARGV[g]
  for suffix, uid, n in string.gmatch(ARGV[g + 1], '(%S+) (%S+) (%d+)\\n') do
    local key = prefix .. suffix
    local r = redis.pcall('HINCRBY', key, uid, n)
    if type(r) == 'table' and r.err then out[#out + 1] = '1' else
      out[#out + 1] = '0'
      if r == tonumber(n) then fresh[key] = ttl end  -- a new field (a count is never 0)
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
    the next 5 bits (``SUBKEYS`` = 32), independent of the bucket.
    """
    h = abs(murmur3_32(uid_bytes(uid)))
    return (h & (BUCKETS - 1)) + 1, (h >> 11) & (SUBKEYS - 1)


def fcap_prefix(scope: str, uid: str) -> str:
    """Return the key prefix (hash tag included) of ``uid``'s counts in ``scope``."""
    return "c2b:fcap:{" + f"{scope}:{fcap_place(uid)[0]}" + "}"


def fcap_keys(scope: str, day: str, uid: str) -> tuple[str, str, str]:
    """Return the day, week and receipts keys that hold ``uid``'s counts of ``day`` in ``scope``."""
    bucket, sub = fcap_place(uid)
    prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}"
    return f"{prefix}:{day}:{sub}", f"{prefix}:{week_of(day)}:{sub}", f"{prefix}:{day}:rcpt"


def partner_fcap_keys(scope: str, day: str, uid: str) -> tuple[str, str]:
    """Return the day and week keys that held ``uid``'s counts in the layout with 64 sub-keys, when
    that was not its sub-key now (sub-key ``j`` then held the users of ``j`` and of ``j + 32``, its
    partner); still read until they expire."""
    bucket, sub = fcap_place(uid)
    prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}"
    return f"{prefix}:{day}:{sub + SUBKEYS}", f"{prefix}:{week_of(day)}:{sub + SUBKEYS}"


def old_fcap_keys(scope: str, day: str, uid: str) -> tuple[str, str]:
    """Return the day and week keys of the layout before sub-keys (one hash per bucket-day), which
    are still read until they expire."""
    prefix = fcap_prefix(scope, uid)
    return f"{prefix}:{day}", f"{prefix}:{week_of(day)}"


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
        for i, (day, uid, _, n) in enumerate(asks):
            bucket, sub = fcap_place(uid)
            text = lines.get(day)
            if text is None:
                text = lines[day] = []
                by_day[day] = []
            text.append(f"{bucket}}}:{day}:{sub} {uid} {n}\n")
            by_day[day].append(i)
        args: list[Any] = []
        for day, text in lines.items():
            blob = "".join(text)
            # Each line has exactly two spaces and one newline unless a uid holds whitespace (or is
            # empty: two spaces in a row); such uids take the general path.
            if blob.count(" ") != 2 * len(text) or blob.count("\n") != len(text) or "  " in blob:
                self._move(asks, receipt)
                return asks
            args += [max(MIN_TTL, _expire_at(day)[0] - now), blob]
            order += by_day[day]
        receipts = "c2b:fcap:{" + self.rules.scope + ":counts}:rcpt"
        answer = self._counter(keys=[receipts], args=[receipt, self._answered.get(receipts, ""), RECEIPT_TTL,
                                                       "c2b:fcap:{" + self.rules.scope + ":", *args])
        self._answered[receipts] = receipt
        answered = answer.decode() if isinstance(answer, bytes) else str(answer)
        redo = [asks[i] for i, bad in zip(order, answered, strict=True) if bad == "1"]
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
        by_call: dict[str, tuple[str, str, dict[int, int], list[tuple[int, int]]]] = {}
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
            call[3].append((i, j))
        calls = []
        sha = self._script.sha
        now = int(time.time())
        for rcpt, (prefix, day, subs, idx) in by_call.items():
            week = week_of(day)
            keys = [rcpt, f"{prefix}:{day}", f"{prefix}:{week}", *(f"{prefix}:{day}:{sub}" for sub in subs)]
            if self._week:
                keys += [f"{prefix}:{week}:{sub}" for sub in subs]
            keys += [f"{prefix}:{day}:{sub + SUBKEYS}" for sub in subs]  # the 64-sub-key layout's partners
            if self._week:
                keys += [f"{prefix}:{week}:{sub + SUBKEYS}" for sub in subs]
            day_ttl, week_ttl = (max(MIN_TTL, at - now) for at in _expire_at(day))
            args: list[Any] = [receipt, self._answered.get(rcpt, ""), day_ttl, week_ttl, RECEIPT_TTL, *self._caps,
                               len(subs)]
            for i, j in idx:
                _, uid, ch, n = asks[i]
                args += [uid, ch, n, j]
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
            for (i, _), a in zip(idx, answer, strict=True):
                text = a.decode() if isinstance(a, bytes) else str(a)
                g, _, why = text.partition(" ")
                out[i] = (int(g), why or None)
        if len(self._answered) > 100_000:
            self._answered.clear()
        return out

    def count(self, day: str, uid: str, channel: str | None = None, week: bool = False) -> int:
        """Return the touches ``uid`` got on ``day`` (or in its week), in total or on ``channel``
        (for tests and support questions; a window or channel that is not capped is not counted)."""
        day_key, week_key, _ = fcap_keys(self.rules.scope, day, uid)
        old_day, old_week = old_fcap_keys(self.rules.scope, day, uid)
        was_day, was_week = partner_fcap_keys(self.rules.scope, day, uid)
        held = 0
        # The older layouts' counts add up (a user has at most one field per layout).
        for key in (week_key, old_week, was_week) if week else (day_key, old_day, was_day):
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
    """Delete every count of ``scope`` (a line, or ``-``); return how many user-days they held.

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
    """Whether a counts key holds day counts: ``...}:<YYYYMMDD>:<sub>`` (or the old ``...}:<YYYYMMDD>``)."""
    parts = (key.decode() if isinstance(key, bytes) else key).rpartition("}:")[2].split(":")
    return len(parts[0]) == 8 and parts[0].isdigit() and (len(parts) == 1 or parts[1].isdigit())
