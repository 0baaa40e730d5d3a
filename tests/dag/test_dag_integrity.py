"""Every plan file yields a DAG with no import errors, tags and retries set."""

from __future__ import annotations

from pathlib import Path

import pytest
from c2b.airflow.dag_factory import plan_files

ROOT = Path(__file__).resolve().parents[2]
PLAN_FILES = plan_files(ROOT / "dags" / "plans")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


@pytest.mark.parametrize("plan_file", PLAN_FILES, ids=lambda p: p.stem)
def test_plan_file_yields_dag(dagbag, plan_file: Path) -> None:
    dag = dagbag.dags.get(plan_file.stem)
    assert dag is not None, f"{plan_file.name} produced no DAG"
    assert "c2b" in dag.tags and len(dag.tags) >= 2
    assert [t.task_id for t in dag.tasks] == ["extract_audience", "load_shards", "deliver", "report", "cleanup"]
    for t in dag.tasks:
        assert t.retries >= 2, f"{t.task_id} retries {t.retries}"
    assert dag.doc_md and plan_file.name in dag.doc_md
