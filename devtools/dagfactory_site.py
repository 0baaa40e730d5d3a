"""astronomer dag-factory for the parse benchmark only, installed in its own folder.

dag-factory registers an Airflow plugin through an entry point: installed in the project's venv,
every Airflow process (``make demo``, ``make ui``, each task) would load it and log its
deprecation warnings, and the c2b side of the benchmark would pay for its import. So it lives in
``.airflow/bench/dag-factory-<version>/`` (``pip install --target``, on top of the venv's
Airflow), and only the benchmark's dag-factory processes get that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VERSION = "1.1.0"
ROOT = Path(__file__).resolve().parents[1]


def site_dir() -> Path:
    """Folder holding the ``dagfactory`` package (and its entry-point metadata)."""
    return ROOT / ".airflow" / "bench" / f"dag-factory-{VERSION}"


def ensure_site() -> Path:
    """Install dag-factory into :func:`site_dir` once (its dependencies are the venv's); return it."""
    folder = site_dir()
    if (folder / "dagfactory").is_dir():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--target", str(tmp), f"dag-factory=={VERSION}"], check=True)
    tmp.rename(folder)
    return folder
