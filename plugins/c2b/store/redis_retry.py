"""Ride out a short Redis outage (restart, failover) inside a task instead of failing it.

Only for steps that are safe to repeat: reads, and the engine's conditional scripts. A longer
outage still raises, and Airflow's task retry takes over from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

PATIENCE_S = float(os.environ.get("C2B_REDIS_PATIENCE_S", "30"))


def with_redis_retry(fn: Callable[[], T], patience: float | None = None) -> T:
    """Return ``fn()``, retrying Redis connection errors with backoff for up to ``patience`` seconds
    (default ``C2B_REDIS_PATIENCE_S``, 30)."""
    import redis

    patience = PATIENCE_S if patience is None else patience
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.NoScriptError) as exc:
            # NoScriptError: the server restarted between a pipeline loading its scripts and running
            # them; the next try loads them again.
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


