"""Retention of run artifacts that hold personal data: outboxes (rendered texts) and reports.

Each run's cleanup task deletes the plan's outbox folders and report files last written more than
``C2B_RETENTION_DAYS`` days ago (:func:`c2b.settings.retention_days`); the staging file of the run
itself is deleted by the same task right away.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from c2b.settings import outbox_dir, reports_dir


def _newest_mtime(path: Path) -> float:
    if path.is_file():
        return path.stat().st_mtime
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return max(times, default=path.stat().st_mtime)


def purge_expired(plan_id: str, days: float, now: float | None = None) -> int:
    """Delete the plan's outbox run folders and reports older than ``days``; return how many."""
    cutoff = (now if now is not None else time.time()) - days * 86400
    removed = 0
    for folder in (outbox_dir() / plan_id, reports_dir() / plan_id):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            try:
                if _newest_mtime(entry) >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
            except FileNotFoundError:  # another cleanup got there first
                continue
    return removed
