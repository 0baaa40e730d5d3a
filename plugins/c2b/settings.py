"""Where the engine finds its SQL and keeps its files; each overridable by an environment variable.

Defaults suit the embedded demo (everything under the project's ``.airflow/``). In a scaled-out
deployment point ``C2B_DATA_DIR`` at storage all workers share.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sql_dir() -> Path:
    """Folder holding ``segments/`` SQL files."""
    return Path(os.environ.get("C2B_SQL_DIR", PROJECT_ROOT / "include" / "sql"))


def data_dir() -> Path:
    """Root of staging files, outboxes and run reports."""
    default = Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / ".airflow")) / "c2b"
    return Path(os.environ.get("C2B_DATA_DIR", default))


def staging_dir() -> Path:
    return data_dir() / "staging"


def outbox_dir() -> Path:
    return data_dir() / "outbox"


def reports_dir() -> Path:
    return data_dir() / "reports"


def retention_days() -> float:
    """Days a plan's outboxes (rendered messages) and run reports are kept (``C2B_RETENTION_DAYS``,
    default 30); the cleanup task of each run deletes what is older."""
    return float(os.environ.get("C2B_RETENTION_DAYS", "30"))


def safe_name(run_id: str) -> str:
    """Return ``run_id`` usable as a file name (Airflow run ids contain ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
