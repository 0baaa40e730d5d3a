"""The global frequency cap: at most N touches per user per day, counted across every plan.

Every plan counts its sends here, capped or not, so a plan with ``frequency_cap: 2`` sees the
touches other plans sent the same user today.

Keys (no big keys, cluster-safe): ``c2b:fcap:{<YYYYMMDD>:<bucket>}`` HASH uid -> touches that day,
``bucket = shard_index(uid, 1024)``; one key per day and bucket, each on its own slot, with a TTL
of two days. The day is the user's local day (see :mod:`c2b.quiet_hours`).

A capped plan takes a slot *before* the send and gives it back when the send fails for good.
Taking is ``HINCRBY`` then, for whatever went over the cap, ``HINCRBY -excess``: the increment is
atomic, so of two shards racing for a user's last slot exactly one gets it (the other sees the
count past the cap and steps back). Plain commands, so it pipelines on Redis Cluster too (one round
trip for a whole page, plus one more only when someone hit the cap). A worker killed between
taking the slot and recording the message leaves the slot taken: the user may get one touch fewer
that day, never one more.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from c2b.hashing import shard_index

BUCKETS = 1024
TTL_SECONDS = 2 * 24 * 3600

def fcap_key(day: str, uid: str) -> str:
    return "c2b:fcap:{" + f"{day}:{shard_index(uid, BUCKETS)}" + "}"


class FrequencyCap:
    """Take and give back per-user daily touch slots; ``cap=None`` only counts."""

    def __init__(self, redis: Any, cap: int | None) -> None:
        self.redis = redis
        self.cap = cap
        self._with_ttl: set[str] = set()  # keys this instance already gave a TTL (one EXPIRE, not one per user)

    def take(self, wants: Iterable[tuple[str, str, int]]) -> dict[tuple[str, str], int]:
        """Take slots for ``(day, uid, touches wanted)``; return granted touches per (day, uid)."""
        asks = [(day, uid, n) for day, uid, n in wants if n > 0]
        if not asks:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for day, uid, n in asks:
            pipe.hincrby(fcap_key(day, uid), uid, n)
        new_keys = {fcap_key(day, uid) for day, uid, _ in asks} - self._with_ttl
        for key in new_keys:
            pipe.expire(key, TTL_SECONDS)
        counts = pipe.execute()[:len(asks)]
        if len(self._with_ttl) > 100_000:
            self._with_ttl.clear()
        self._with_ttl |= new_keys
        granted: dict[tuple[str, str], int] = {}
        back = self.redis.pipeline(transaction=False)
        excess_any = False
        for (day, uid, n), after in zip(asks, counts, strict=True):
            g = n if not self.cap else max(0, min(n, self.cap - (int(after) - n)))
            granted[(day, uid)] = g
            if g < n:
                back.hincrby(fcap_key(day, uid), uid, g - n)
                excess_any = True
        if excess_any:
            back.execute()
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
