"""The global frequency cap: at most N touches per user per day, counted across every plan.

Every plan counts its touches here, capped or not, so a plan with ``frequency_cap: 2`` sees the
touches other plans sent the same user today. The count and the check are one atomic Lua call per
key, so parallel shards and plans cannot both take the last slot.

Keys (no big keys, cluster-safe): ``c2b:fcap:{<YYYYMMDD>:<bucket>}`` HASH uid -> touches that day,
``bucket = shard_index(uid, 1024)``; one key per day and bucket, each on its own slot, with a TTL
of two days. The day is the user's local day (see :mod:`c2b.quiet_hours`).

A slot is taken *before* the send (so two shards cannot overshoot) and given back when the send
fails for good. A worker killed between taking the slot and recording the message leaves the slot
taken: the user may get one touch fewer that day, never one more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from c2b.hashing import shard_index

BUCKETS = 1024
TTL_SECONDS = 2 * 24 * 3600

_TAKE = """
local cap = tonumber(ARGV[1])
local out = {}
for i = 3, #ARGV, 2 do
  local uid = ARGV[i]
  local want = tonumber(ARGV[i + 1])
  local grant = want
  if cap > 0 then
    local cur = tonumber(redis.call('HGET', KEYS[1], uid) or '0')
    grant = math.max(0, math.min(want, cap - cur))
  end
  if grant > 0 then redis.call('HINCRBY', KEYS[1], uid, grant) end
  out[#out + 1] = grant
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return out
"""


def fcap_key(day: str, uid: str) -> str:
    return "c2b:fcap:{" + f"{day}:{shard_index(uid, BUCKETS)}" + "}"


class FrequencyCap:
    """Take and give back per-user daily touch slots; ``cap=None`` only counts."""

    def __init__(self, redis: Any, cap: int | None) -> None:
        self.redis = redis
        self.cap = cap
        self._take = redis.register_script(_TAKE)

    def take(self, wants: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
        """Take slots for ``(day, uid, touches wanted)``; return granted touches per (day, uid).

        One pipelined round trip for a whole page, one script call per key touched.
        """
        by_key: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for day, uid, n in wants:
            if n > 0:
                by_key[fcap_key(day, uid)].append((day, uid, n))
        if not by_key:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for key, items in by_key.items():
            args: list[Any] = [self.cap or 0, TTL_SECONDS]
            for _day, uid, n in items:
                args += [uid, n]
            self._take(keys=[key], args=args, client=pipe)
        granted: dict[tuple[str, str], int] = {}
        for items, answer in zip(by_key.values(), pipe.execute()):
            for (day, uid, _n), g in zip(items, answer):
                granted[(day, uid)] = int(g)
        return granted

    def give_back(self, items: Iterable[tuple[str, str]]) -> None:
        """Return one slot per (day, uid) (a send that failed for good reached nobody)."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for day, uid in items:
            pipe.hincrby(fcap_key(day, uid), uid, -1)
            n += 1
        if n:
            pipe.execute()

    def count(self, day: str, uid: str) -> int:
        """Return the touches ``uid`` got on ``day`` (for tests and support questions)."""
        return int(self.redis.hget(fcap_key(day, uid), uid) or 0)
