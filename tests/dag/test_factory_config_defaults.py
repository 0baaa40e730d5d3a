"""The factory's shortcuts leave the DAG as Airflow would build it."""

from __future__ import annotations

from pathlib import Path

import pytest
from c2b.airflow.dag_factory import plan_files

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", plan_files(ROOT / "dags" / "plans"), ids=lambda p: p.stem)
def test_config_read_once_builds_the_same_dag(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passing the config-derived DAG arguments read once equals letting DAG() read them."""
    from airflow.serialization.serialized_objects import DagSerialization
    from c2b.airflow import dag_factory
    from c2b.plan.load import load_plan

    plan = load_plan(path, check_name=True)
    fast = DagSerialization.to_dict(dag_factory.build_dag(plan, path))
    monkeypatch.setattr(dag_factory, "_dag_config_defaults", dict)
    assert DagSerialization.to_dict(dag_factory.build_dag(plan, path)) == fast
