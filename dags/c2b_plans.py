"""## c2b campaign plans

Builds one DAG per plan file in ``dags/plans/``. A broken plan file is reported and does not stop
the others from loading.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from airflow.sdk import get_parsing_context

from c2b.factory import build_dags

_dags, _errors = build_dags(Path(__file__).parent / "plans", get_parsing_context().dag_id)
globals().update(_dags)
for _error in _errors:
    warnings.warn(str(_error), stacklevel=1)
