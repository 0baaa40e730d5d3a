"""## c2b results DAGs

One ``<plan>__results`` DAG per plan with a ``goal:``: every day it counts the conversions of the
plan's runs whose attribution window is open (see ``c2b.airflow.results_dag``). Only the requested
one is built when a worker parses this file for a task.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import get_parsing_context
from c2b.airflow.results_dag import results_dags

globals().update(results_dags(Path(__file__).parent / "plans", get_parsing_context().dag_id))
