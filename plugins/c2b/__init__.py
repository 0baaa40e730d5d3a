"""c2b-campaigns engine: plans, audiences, sharded Redis store, delivery and reports.

The engine does not import Airflow except in :mod:`c2b.airflow.dag_factory` and :mod:`c2b.airflow.resources`, so the
core stays fast to import and testable without an Airflow process.
"""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
