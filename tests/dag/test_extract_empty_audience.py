"""A plan whose segment selects nobody: the run succeeds, delivery is skipped (not failed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from c2b.airflow.dag_factory import build_dags

ROOT = Path(__file__).resolve().parents[2]
PLAN = {
    "id": "empty_audience_plan",
    # Nothing in the demo data is quoted anywhere near this (a valid param value: plans are validated).
    "audience": {"segment": "high_value_cancellations.sql", "params": {"min_price": 100_000_000, "days": 30}},
    "touches": [{"name": "push", "channel": "outbox", "template": "hi {{ nickname }}"}],
    "delivery": {"shards": 4, "retries": 0},
}


@pytest.fixture
def dags_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DAGs folder with the project's loader and one extra plan (dag.test() syncs the folder)."""
    from airflow import settings

    folder = tmp_path / "dags"
    (folder / "plans").mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", folder / "c2b_plans.py")
    (folder / "plans" / f"{PLAN['id']}.yaml").write_text(yaml.safe_dump(PLAN))
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
    return folder


def test_empty_audience_run_succeeds_and_skips_delivery(c2b_env: Path, redis_client, dags_folder: Path) -> None:
    dags, errors = build_dags(dags_folder / "plans", PLAN["id"])
    assert not errors
    dr = dags[PLAN["id"]].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
    assert states["extract_audience"] == "success"
    assert states["load_shards"] == "success"
    assert states["deliver"] == "skipped"
    assert states["report"] == "success" and states["cleanup"] == "success"

    summary = json.loads(next((c2b_env / "reports" / PLAN["id"]).glob("*.json")).read_text())
    assert summary["audience"]["kept"] == 0 and summary["audience"]["rows"] == 0
    assert summary["shards"]["loaded"] == [] and summary["outcomes"] == {}

    from c2b.cli import render_summary

    assert "0 users (empty audience, nothing delivered)" in render_summary(summary, 1.0, Path("r.json"))
