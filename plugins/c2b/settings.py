"""Where the engine finds its SQL and keeps its files; each overridable by an environment variable.

Defaults suit the embedded demo (everything under the project's ``.airflow/``). In a scaled-out
deployment point ``C2B_DATA_URL`` at storage all workers share (``s3://<conn_id>@bucket/prefix``,
see :mod:`c2b.storage`); run artifacts then live there, and ``C2B_DATA_DIR`` keeps only local files
(the results DuckDB, demo logs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sql_dir() -> Path:
    """Folder holding ``segments/`` SQL files."""
    return Path(os.environ.get("C2B_SQL_DIR", PROJECT_ROOT / "include" / "sql"))


def data_dir() -> Path:
    """Local folder of the engine's files; also the root of run artifacts unless ``C2B_DATA_URL``
    says otherwise (:func:`c2b.storage.data_url`)."""
    default = Path(os.environ.get("AIRFLOW_HOME", PROJECT_ROOT / ".airflow")) / "c2b"
    return Path(os.environ.get("C2B_DATA_DIR", default))


def staging_dir() -> ObjectStoragePath:
    """Staging Parquet files and extract markers: ``<data url>/staging/<plan>/<run>.parquet``."""
    from c2b.storage import root

    return root() / "staging"


def outbox_dir() -> ObjectStoragePath:
    """Outbox channel messages: ``<data url>/outbox/<plan>/<run>/``."""
    from c2b.storage import root

    return root() / "outbox"


def reports_dir() -> ObjectStoragePath:
    """Run reports: ``<data url>/reports/<plan>/<run>.json``."""
    from c2b.storage import root

    return root() / "reports"


def ledgers_dir() -> ObjectStoragePath:
    """Ledgers of cleaned-up runs (:mod:`c2b.delivery.ledger_archive`): ``<data url>/ledgers/<plan>/<run>.ledger``."""
    from c2b.storage import root

    return root() / "ledgers"


def retention_days() -> float:
    """Days a plan's outboxes (rendered messages) and run reports are kept (``C2B_RETENTION_DAYS``,
    default 30); the cleanup task of each run deletes what is older."""
    return float(os.environ.get("C2B_RETENTION_DAYS", "30"))


def safe_name(run_id: str) -> str:
    """Return ``run_id`` usable as a file name (Airflow run ids contain ':' and '+')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
