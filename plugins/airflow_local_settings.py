"""Airflow local settings of the c2b project, imported by every Airflow process at start-up.

Airflow puts ``plugins/`` on ``sys.path`` before importing this module, so every component that
parses DAGs (dag-processor, workers' task runner, ``airflow dags ...`` commands, tests' DagBag)
registers the c2b plan importer: ``dags/plans.yaml`` (the plan index) then builds every
``dags/plans/<id>.yaml``, and a broken plan is its own import error. See README "Validating plans".
"""

from __future__ import annotations

import os

from c2b.airflow.dag_factory import install_plan_importer

# Airflow copies every public name of this module into airflow.settings; export none.
__all__: list[str] = []

# C2B_PLAN_IMPORTER=off (set it for every component alike) parses all plans in the one file
# dags/c2b_plans.py instead, where a broken plan is only a warning.
if os.environ.get("C2B_PLAN_IMPORTER", "on").lower() not in ("off", "0", "false", "no"):
    install_plan_importer()
