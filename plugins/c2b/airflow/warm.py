"""Import what a task process needs in the processes that fork task processes, once.

Every Airflow task runs in a process forked from a long-lived one: a LocalExecutor worker (itself
forked from the scheduler) or a Celery worker's pool process (forked from ``airflow celery
worker``). A forked child inherits the parent's imported modules, so what the parent imported
costs the child nothing; what it did not, every task imports again: the plan models and Jinja to
parse its plan, then the engine's steps with DuckDB, pyarrow and the Redis client. Measured on the
demo plan (16 deliver tasks of ~400 users), that was a large share of each task's own CPU time.

``plugins/airflow_local_settings.py`` calls :func:`warm` in those parents (the scheduler, which
forks the LocalExecutor's workers, and ``airflow celery worker``) before they fork anything. Only
modules, no connections or state: a fork must not share sockets. ``C2B_WARM_IMPORTS=off`` turns it
off (set it for every component alike).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

# What a plan's parse and its tasks import, heaviest first (a missing optional one is skipped).
MODULES = (
    "pyarrow", "pyarrow.parquet", "duckdb", "numpy", "redis", "redis.asyncio", "jinja2", "yaml", "pendulum",
    "c2b.plan.model", "c2b.plan.templates", "c2b.plan.checks", "c2b.plan.load", "c2b.plan.lines",
    "c2b.steps", "c2b.airflow.resources", "c2b.channels", "c2b.results.delivery_log", "c2b.results.store",
    "c2b.results.report", "c2b.results.attribution", "c2b.delivery.shard",
)


def forks_tasks(argv: Sequence[str]) -> bool:
    """Return whether this Airflow command forks task processes (scheduler with LocalExecutor, a
    Celery worker)."""
    args = [a for a in argv[1:] if not a.startswith("-")]
    if args[:2] == ["celery", "worker"]:
        return True
    # A scheduler forks task processes only with LocalExecutor (the default; a CeleryExecutor
    # scheduler sends them to the workers).
    executor = os.environ.get("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    return args[:1] == ["scheduler"] and "LocalExecutor" in executor


def warm(modules: Sequence[str] = MODULES) -> list[str]:
    """Import ``modules``; return those imported (a failure is left for the task to report)."""
    if os.environ.get("C2B_WARM_IMPORTS", "on").lower() in ("off", "0", "false", "no"):
        return []
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
            done.append(name)
        except Exception:  # noqa: BLE001 - the task imports it again and fails with the real error
            pass
    return done
