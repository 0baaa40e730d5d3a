"""Retention of run artifacts that hold personal data: outboxes (rendered texts) and reports.

Each run's cleanup task deletes the plan's outbox folders and report files last written more than
``C2B_RETENTION_DAYS`` days ago (:func:`c2b.settings.retention_days`); the staging file of the run
itself is deleted by the same task right away. Works on any storage of run artifacts
(:mod:`c2b.storage`): a folder's age is that of its newest file (on object storage, its newest object).
"""

from __future__ import annotations

import time

from c2b import storage
from c2b.settings import outbox_dir, reports_dir


def purge_expired(plan_id: str, days: float, now: float | None = None) -> int:
    """Delete the plan's outbox run folders and reports older than ``days``; return how many."""
    cutoff = (now if now is not None else time.time()) - days * 86400
    removed = 0
    for folder in (outbox_dir() / plan_id, reports_dir() / plan_id):
        for entry, is_folder, newest in storage.entries(folder):
            if newest >= cutoff:
                continue
            if storage.delete(entry, recursive=is_folder):  # False: another cleanup got there first
                removed += 1
    return removed
