"""Baseline for ``bench/fcap_memory.py``: the frequency-cap counts as kept before sub-keys (one
HASH per (scope, bucket, day), ``c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>``), copied unchanged (its
scripts and FrequencyCap; the rules are the platform's) from
``plugins/c2b/delivery/controls/frequency_cap.py`` at commit 5163f12, so the bench measures the
old and the new layout in the same run. Not used by the platform.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from c2b.delivery.controls.frequency_cap import CapRules
from c2b.hashing import shard_index
from c2b.store.script_pipelines import run_scripts

BUCKETS = 2048
NO_LINE = "-"  # the scope of plans outside any business line (line names are [a-z][a-z0-9_]+)
RECEIPT_TTL = 3600
PAST_WINDOW = timedelta(hours=15)  # UTC-12 ends a day 12 hours after UTC does; 3 hours to spare
MIN_TTL = 3600  # a count written for a day already over (a test's fixed day, a skewed clock) lives an hour


# KEYS: day counts, week counts, receipts (of that day and bucket: one call per key set, so a
# receipt answers one call). ARGV: receipt, previous receipt, day ttl, week ttl, receipt ttl, day
# cap (-1: none; the day total is always counted), week cap (-1: none, not counted), channel caps
# "<ch>:<day cap>:<week cap>;..." (-1: not counted), then (uid, channel, touches) x n; touches < 0
# gives back. Returns per ask "<granted>" or "<granted> <cap that stopped it>". A field's value is
# "<total>[;<channel>=<n>...]".
_TAKE = """
local done = redis.call('HGET', KEYS[3], ARGV[1])
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
local nocap = {-1, -1}
local NAMES = {'per_day', 'per_week'}
local function load(key, uid)
  local v = redis.call('HGET', key, uid)
  local c = {}
  if not v then return 0, c end
  local i = string.find(v, ';', 1, true)
  if not i then return tonumber(v), c end
  for ch, n in string.gmatch(string.sub(v, i), ';([^=;]+)=(%d+)') do c[ch] = tonumber(n) end
  return tonumber(string.sub(v, 1, i - 1)), c
end
local function save(key, uid, total, c)
  local parts, any = {tostring(total)}, total > 0
  for ch, n in pairs(c) do
    if n > 0 then parts[#parts + 1] = ch .. '=' .. n; any = true end
  end
  if any then redis.call('HSET', key, uid, table.concat(parts, ';')) else redis.call('HDEL', key, uid) end
end
local out = {}
for i = 9, #ARGV, 3 do
  local uid, ch, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local rule = rules[ch] or nocap
  local dt, dc = load(KEYS[1], uid)
  local wt, wc = 0, {}
  if useweek then wt, wc = load(KEYS[2], uid) end
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
    save(KEYS[1], uid, math.max(0, dt + g), dc)
    if useweek then
      if weekcap >= 0 then wt = math.max(0, wt + g) end
      if rule[2] >= 0 then wc[ch] = math.max(0, (wc[ch] or 0) + g) end
      save(KEYS[2], uid, wt, wc)
    end
  end
  if why == 0 then out[#out + 1] = tostring(g)
  elseif why <= 2 then out[#out + 1] = g .. ' ' .. NAMES[why]
  else out[#out + 1] = g .. ' ' .. ch .. '.' .. NAMES[why - 2] end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
if useweek then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[3], ARGV[2]) end
redis.call('HSET', KEYS[3], ARGV[1], table.concat(out, ','))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
return out
"""


# Counting only (a plan without caps, standalone Redis): KEYS[1] the scope's count receipts, then
# the day keys; ARGV: receipt, previous receipt, receipt ttl, n keys, their ttls, then (key index,
# uid, touches) x asks. Returns one character per ask: '0', or '1' when its field is not an
# integer (the script above wrote per-channel counts there): the caller counts those through
# _TAKE. A replay (same receipt) gets the first answer back and counts nothing again.
_COUNT = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return done end
local nk = tonumber(ARGV[4])
local out = {}
for i = nk + 5, #ARGV, 3 do
  local r = redis.pcall('HINCRBY', KEYS[tonumber(ARGV[i]) + 1], ARGV[i + 1], ARGV[i + 2])
  out[#out + 1] = (type(r) == 'table' and r.err) and '1' or '0'
end
for k = 1, nk do redis.call('EXPIRE', KEYS[k + 1], tonumber(ARGV[k + 4])) end
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


def fcap_prefix(scope: str, uid: str) -> str:
    """Return the key prefix (hash tag included) of ``uid``'s counts in ``scope``."""
    return "c2b:fcap:{" + f"{scope}:{shard_index(uid, BUCKETS)}" + "}"


def fcap_keys(scope: str, day: str, uid: str) -> tuple[str, str, str]:
    """Return the day, week and receipts keys that hold ``uid``'s counts of ``day`` in ``scope``."""
    prefix = fcap_prefix(scope, uid)
    return f"{prefix}:{day}", f"{prefix}:{week_of(day)}", f"{prefix}:{day}:rcpt"


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
        scope = self.rules.scope
        now = int(time.time())
        keys: dict[str, int] = {}  # day key -> its index (1-based among the day keys)
        ttls: list[int] = []
        where: list[Any] = []
        for day, uid, _, n in asks:
            key = fcap_keys(scope, day, uid)[0]
            k = keys.get(key)
            if k is None:
                k = keys[key] = len(keys) + 1
                ttls.append(max(MIN_TTL, _expire_at(day)[0] - now))
            where += [k, uid, n]
        receipts = "c2b:fcap:{" + scope + ":counts}:rcpt"
        answer = self._counter(keys=[receipts, *keys], args=[receipt, self._answered.get(receipts, ""), RECEIPT_TTL,
                                                              len(keys), *ttls, *where])
        self._answered[receipts] = receipt
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        redo = [a for a, bad in zip(asks, text, strict=True) if bad == "1"]
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
        by_key: dict[tuple[str, str, str], list[int]] = defaultdict(list)  # (day, week, receipts) keys -> asks
        for i, (day, uid, _, _) in enumerate(asks):
            by_key[fcap_keys(scope, day, uid)].append(i)
        calls = []
        sha = self._script.sha
        for keys, idx in by_key.items():
            now = int(time.time())
            day_ttl, week_ttl = (max(MIN_TTL, at - now) for at in _expire_at(asks[idx[0]][0]))
            args: list[Any] = [receipt, self._answered.get(keys[2], ""), day_ttl, week_ttl, RECEIPT_TTL, *self._caps]
            for i in idx:
                _, uid, ch, n = asks[i]
                args += [uid, ch, n]
            # Plain EVALSHA: redis-py's script objects make a pipeline ask SCRIPT EXISTS first, a
            # round trip per call.
            calls.append((keys[0], lambda pipe, keys=keys, args=args: pipe.evalsha(sha, 3, *keys, *args)))
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
        for (keys, idx), answer in zip(by_key.items(), answers, strict=True):
            self._answered[keys[2]] = receipt
            for i, a in zip(idx, answer, strict=True):
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
        raw = self.redis.hget(week_key if week else day_key, uid)
        if raw is None:
            return 0
        total, *per = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(";")
        if channel is None:
            return int(total)
        return next((int(n) for ch, _, n in (p.partition("=") for p in per) if ch == channel), 0)
