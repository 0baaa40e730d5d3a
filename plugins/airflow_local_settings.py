"""Airflow local settings of the c2b project, imported by every Airflow process at start-up.

Airflow puts ``plugins/`` on ``sys.path`` before importing this module, so every component that
parses DAGs (dag-processor, workers' task runner, ``airflow dags ...`` commands, tests' DagBag)
registers the c2b plan importer: ``dags/plans.yaml`` (the plan index) then builds every
``dags/plans/<id>.yaml``, and a broken plan is its own import error. See docs/plans.md.
"""

from __future__ import annotations

import os
import sys
import warnings

from c2b.airflow.dag_factory import install_plan_importer
from c2b.airflow.warm import forks_tasks, warm

# Airflow copies every public name of this module into airflow.settings; export none.
__all__: list[str] = []

# C2B_PLAN_IMPORTER=off (set it for every component alike) parses all plans in the one file
# dags/c2b_plans.py instead, where a broken plan is only a warning.
if os.environ.get("C2B_PLAN_IMPORTER", "on").lower() not in ("off", "0", "false", "no"):
    install_plan_importer()

# The scheduler (LocalExecutor workers are its forks) and `airflow celery worker` fork every task
# process: import the engine's modules here once, so that each task inherits them instead of
# importing them again (c2b/airflow/warm.py; C2B_WARM_IMPORTS=off turns it off).
if forks_tasks(sys.argv):
    warm()

# Airflow 3.3.2 compiles .airflowignore glob patterns (plugins/.airflowignore keeps the engine
# package out of the plugin scan) with pathspec's GitWildMatchPattern, which pathspec 1.x
# deprecates: every process that scans plugins (each task runner too) would log one warning per
# pattern. The patterns work; the deprecation is Airflow's to act on.
warnings.filterwarnings("ignore", message=r"GitWildMatchPattern \('gitwildmatch'\) is deprecated",
                        category=DeprecationWarning)
