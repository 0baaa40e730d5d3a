"""The global frequency cap: at most N touches per user per day, counted across every plan.

Every plan counts its sends here, capped or not, so a plan with ``frequency_cap: 2`` sees the
touches other plans sent the same user today.

Keys (no big keys, cluster-safe): ``c2b:fcap:{<YYYYMMDD>:<bucket>}`` HASH uid -> touches that day,
``bucket = shard_index(uid, 1024)``; one key per day and bucket, each on its own slot, with a TTL
of two days. The day is the user's local day (see :mod:`c2b.delivery.controls.quiet_hours`).

A capped plan takes a slot *before* the send and gives it back when the send fails for good.
Both are one script per bucket that moves the counts and returns what it granted, so of two shards
racing for a user's last slot exactly one gets it. The scripts of one call are pipelined (one round
trip; on Redis Cluster one per node, see :mod:`c2b.store.script_pipelines`). A worker killed between
taking the slot and recording the message leaves the slot taken: the user may get one touch fewer
that day, never one more.

Replays are safe: when Redis stops right after running a call, the client cannot tell and sends it
again. Each call carries a receipt, and the bucket's receipts hash (``...:rcpt``, next to the
counts, same slot) keeps the answer, so a replay gets the first answer back instead of counting
the touches twice (which would cap a user early, or, for a give-back, let one touch too many
through). A caller drops its previous receipt on its next call to the bucket, so the hash holds
about one receipt per running shard.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from redis.exceptions import NoScriptError

from c2b.hashing import shard_index
from c2b.store.script_pipelines import run_scripts

BUCKETS = 1024
TTL_SECONDS = 2 * 24 * 3600
RECEIPT_TTL = 3600

# KEYS: counts, receipts. ARGV: cap (-1: none), ttl, receipt ttl, receipt, previous receipt, then
# (uid, touches) x n; touches < 0 gives back. Returns the touches granted per uid.
_TAKE = """
local done = redis.call('HGET', KEYS[2], ARGV[4])
if done then
  local out = {}
  for n in string.gmatch(done, '[^,]+') do out[#out + 1] = tonumber(n) end
  return out
end
local cap = tonumber(ARGV[1])
local out = {}
for i = 6, #ARGV, 2 do
  local uid, n = ARGV[i], tonumber(ARGV[i + 1])
  local after = redis.call('HINCRBY', KEYS[1], uid, n)
  local granted = n
  if cap >= 0 and n > 0 then
    granted = math.max(0, math.min(n, cap - (after - n)))
    if granted < n then redis.call('HINCRBY', KEYS[1], uid, granted - n) end
  end
  out[#out + 1] = granted
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[2], ARGV[5]) end
redis.call('HSET', KEYS[2], ARGV[4], table.concat(out, ','))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return out
"""


def fcap_key(day: str, uid: str) -> str:
    return "c2b:fcap:{" + f"{day}:{shard_index(uid, BUCKETS)}" + "}"


class FrequencyCap:
    """Take and give back per-user daily touch slots; ``cap=None`` only counts.

    One instance per thread: it remembers its last receipt per bucket.
    """

    def __init__(self, redis: Any, cap: int | None) -> None:
        self.redis = redis
        self.cap = cap
        self._script = redis.register_script(_TAKE)
        self._answered: dict[str, str] = {}  # bucket key -> receipt of our last answered call

    @staticmethod
    def new_receipt() -> str:
        return uuid.uuid4().hex

    def take(self, wants: Iterable[tuple[str, str, int]], receipt: str | None = None) -> dict[tuple[str, str], int]:
        """Take slots for ``(day, uid, touches wanted)``; return granted touches per (day, uid).

        Pass the same ``receipt`` (:meth:`new_receipt`) when retrying a call whose outcome is unknown.
        """
        return self._move([(day, uid, n) for day, uid, n in wants if n > 0], receipt)

    def give_back(self, items: Iterable[tuple[str, str]], receipt: str | None = None) -> None:
        """Return one slot per (day, uid) (a send that failed for good reached nobody)."""
        self._move([(day, uid, -1) for day, uid in items], receipt)

    def _move(self, asks: list[tuple[str, str, int]], receipt: str | None) -> dict[tuple[str, str], int]:
        if not asks:
            return {}
        receipt = receipt or self.new_receipt()
        cap = -1 if self.cap is None else self.cap
        by_key: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for day, uid, n in asks:
            by_key[fcap_key(day, uid)].append((day, uid, n))
        calls = []
        sha = self._script.sha
        for key, group in by_key.items():
            args: list[Any] = [cap, TTL_SECONDS, RECEIPT_TTL, receipt, self._answered.get(key, "")]
            for _, uid, n in group:
                args += [uid, n]
            # Plain EVALSHA: redis-py's script objects make a pipeline ask SCRIPT EXISTS first, a
            # round trip per call.
            calls.append((key, lambda pipe, key=key, args=args: pipe.evalsha(sha, 2, key, key + ":rcpt", *args)))
        try:
            answers = run_scripts(self.redis, calls)
        except NoScriptError:
            # A server lost its script cache (restart, failover): load it and run the call again.
            # Safe: the buckets that did run it answer from their receipts.
            self.redis.script_load(_TAKE)
            answers = run_scripts(self.redis, calls)
        granted: dict[tuple[str, str], int] = defaultdict(int)
        for (key, group), answer in zip(by_key.items(), answers, strict=True):
            self._answered[key] = receipt
            for (day, uid, _), g in zip(group, answer, strict=True):
                granted[(day, uid)] += int(g)
        if len(self._answered) > 100_000:
            self._answered.clear()
        return dict(granted)

    def count(self, day: str, uid: str) -> int:
        """Return the touches ``uid`` got on ``day`` (for tests and support questions)."""
        return int(self.redis.hget(fcap_key(day, uid), uid) or 0)
