"""The kill switch: stop every shard of one plan, or of all plans, within one page.

Two places can turn it on, and either is enough:

- **Redis flags** ``c2b:kill`` (all plans) and ``c2b:kill:<plan>``, set by ``c2b kill``.
  Checked before every page: one pipelined round trip.
- **The Airflow Variable** ``c2b_kill_switch`` (UI: Admin -> Variables), ``all`` or a list of plan
  ids (JSON list or comma separated). Reading it costs an API call, so it is read at most every
  ``variable_every`` seconds; the engine gets it as a plain callable from ``c2b.airflow.resources``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GLOBAL_FLAG = "c2b:kill"
VARIABLE = "c2b_kill_switch"
ALL_WORDS = {"all", "*", "true", "on", "1", "yes"}


def plan_flag(plan_id: str) -> str:
    return f"{GLOBAL_FLAG}:{plan_id}"


def variable_stops(value: Any, plan_id: str) -> bool:
    """Return whether a ``c2b_kill_switch`` Variable value stops ``plan_id``.

    ``None``/empty/``off`` stops nothing; ``all`` stops every plan; otherwise a JSON list or a
    comma separated list of plan ids.
    """
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if not text or text.lower() in {"off", "none", "false", "0", "[]", "no"}:
            return False
        if text.lower() in ALL_WORDS:
            return True
        try:
            value = json.loads(text)
        except ValueError:
            value = [p.strip() for p in text.split(",")]
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple | set):
        ids = {str(v).strip() for v in value}
        return plan_id in ids or bool(ids & ALL_WORDS)
    return False


class KillSwitch:
    """Callable check: true when the plan must stop. ``reason`` says which switch fired."""

    def __init__(self, redis: Any, plan_id: str, read_variable: Callable[[], Any] | None = None,
                 variable_every: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.plan_id = plan_id
        self.read_variable = read_variable
        self.variable_every = variable_every
        self.clock = clock
        self._variable_at = float("-inf")
        self._variable_on = False
        self.reason = ""

    def _redis_on(self) -> str:
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(GLOBAL_FLAG)  # separate commands: the two keys may live on different cluster nodes
        pipe.exists(plan_flag(self.plan_id))
        all_on, plan_on = pipe.execute()
        if all_on:
            return f"Redis flag {GLOBAL_FLAG}"
        if plan_on:
            return f"Redis flag {plan_flag(self.plan_id)}"
        return ""

    def _variable_on_now(self) -> bool:
        if self.read_variable is None:
            return False
        now = self.clock()
        if now - self._variable_at >= self.variable_every:
            self._variable_at = now
            try:
                self._variable_on = variable_stops(self.read_variable(), self.plan_id)
            except Exception as exc:  # an unreachable API must not stop (or crash) delivery
                log.warning("could not read Variable %s (%s); keeping the last value", VARIABLE, exc)
        return self._variable_on

    def __call__(self) -> bool:
        reason = self._redis_on()
        if not reason and self._variable_on_now():
            reason = f"Airflow Variable {VARIABLE}"
        self.reason = reason
        return bool(reason)


def set_flag(redis: Any, plan: str, on: bool = True) -> str:
    """Turn the Redis flag of ``plan`` (or ``all``) on or off; return the key."""
    key = GLOBAL_FLAG if plan == "all" else plan_flag(plan)
    if on:
        redis.set(key, str(int(time.time())))
    else:
        redis.delete(key)
    return key


def flags_on(redis: Any) -> list[str]:
    """Return the Redis kill flags that are on (SCAN, never KEYS)."""
    found = [GLOBAL_FLAG] if redis.exists(GLOBAL_FLAG) else []
    found += sorted(k.decode() if isinstance(k, bytes) else k for k in redis.scan_iter(f"{GLOBAL_FLAG}:*", count=1000))
    return found
