"""## c2b campaign plans (fallback loader)

Every ``dags/plans/<id>.yaml`` is normally built through ``dags/plans.yaml`` (the plan index) by the
c2b plan importer that ``plugins/airflow_local_settings.py`` installs; then this module exports
nothing. Where that
importer is not installed, this module builds the plans instead (only the requested one on a
worker, via Airflow's parsing context), reporting broken plans as warnings.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import get_parsing_context
from c2b.airflow.dag_factory import fallback_dags

globals().update(fallback_dags(Path(__file__).parent / "plans", get_parsing_context().dag_id))
