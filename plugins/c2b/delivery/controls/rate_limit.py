"""Rate limits shared by every worker: GCRA reservations in one Redis key per limit.

A channel's gateway allows, say, 2,000 SMS/s for the whole company, while a run has 64 shards on
many workers. Each send first *reserves* its slot with one atomic Lua call: the key holds the
theoretical arrival time (TAT) of the next free slot; the script moves it forward by ``n``
emission intervals and answers how long the caller must wait. All clocks are Redis's (``TIME``),
so workers with skewed clocks still share one schedule, and no caller polls: it sleeps exactly
until its slot (and books a new one if it wakes too late, see :class:`Limits`). ``burst`` lets
that many messages go early after an idle spell (default 0: strict pacing, so a window of any
length never sees more than ``rate`` x length + 1 request).

Key: ``c2b:rl:{<name>}`` (its own cluster slot), with a TTL just past the last reservation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tau - now
if wait < 0 then wait = 0 end
local new_tat = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.1f', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 60000)
return math.floor(wait)
"""


def limiter_key(name: str) -> str:
    return "c2b:rl:{" + name + "}"


class RateLimiter:
    """``rate`` messages per second for everyone sharing ``name``."""

    def __init__(self, redis: Any, name: str, rate: float, burst: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit {name!r} must be positive, got {rate}")
        self.name = name
        self.rate = float(rate)
        self.key = limiter_key(name)
        self.interval_us = 1e6 / self.rate
        self.tau_us = max(0.0, burst) * self.interval_us
        self._script = redis.register_script(_RESERVE)

    def reserve(self, n: int = 1) -> float:
        """Reserve ``n`` messages; return the seconds to wait before sending them."""
        return int(self._script(keys=[self.key], args=[f"{self.interval_us:.3f}", f"{self.tau_us:.3f}", n])) / 1e6

    def __repr__(self) -> str:
        return f"RateLimiter({self.name!r}, {self.rate:g}/s)"


class Limits:
    """All limits one send must respect (the channel's and the plan's); waits for the latest slot.

    A send that reaches its slot late (its process was starved of CPU, or the loop was busy) does
    not go late: other workers have used the slots since, so sending now would add to theirs and
    overshoot the shared rate. It books a new slot instead, up to ``rebook`` times, then goes.
    """

    def __init__(self, limiters: Sequence[RateLimiter] = (), late_after: float = 0.05, rebook: int = 3) -> None:
        self.limiters = list(limiters)
        self.late_after = late_after
        self.rebook = rebook
        self.waited = 0.0  # seconds spent waiting (read by progress logs; races are harmless)
        self.rebooked = 0  # slots given up because they were reached late

    def __bool__(self) -> bool:
        return bool(self.limiters)

    async def acquire_async(self, n: int = 1) -> None:
        """Wait, without blocking the event loop, until ``n`` messages may go under every limit."""
        if not self.limiters:
            return
        loop = asyncio.get_running_loop()
        for attempt in range(self.rebook + 1):
            due = await loop.run_in_executor(None, self._book, n)
            if due > time.monotonic():
                self.waited += due - time.monotonic()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            if not self._late(due, attempt):
                return

    def _book(self, n: int) -> float:
        """Reserve ``n`` messages under every limit; return when (``time.monotonic()``) they may go."""
        from c2b.store.redis_retry import with_redis_retry

        wait = max(with_redis_retry(partial(lim.reserve, n)) for lim in self.limiters)
        return time.monotonic() + wait

    def _late(self, due: float, attempt: int) -> bool:
        if time.monotonic() - due <= self.late_after or attempt == self.rebook:
            return False
        self.rebooked += 1
        return True
