"""A plan run's ``report`` task emits the Asset event ``c2b://plans/<plan>/report`` with the counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLAN = "cancelled_price_coupon"


@pytest.fixture
def demo_dag():
    from c2b.airflow.dag_factory import build_dags

    dags, errors = build_dags(ROOT / "dags" / "plans", PLAN)
    assert not errors
    return dags[PLAN]


def test_report_task_emits_the_report_asset_with_the_counts(c2b_env: Path, redis_client, demo_dag) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    uri = f"c2b://plans/{PLAN}/report"
    report = demo_dag.get_task("report")
    assert [o.uri for o in report.outlets] == [uri]

    dr = demo_dag.test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    with create_session() as session:
        events = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.uri == uri, AssetEvent.source_run_id == dr.run_id)).all()
        extras = [e.extra for e in events]
    assert len(extras) == 1, extras
    summary = json.loads(next((c2b_env / "reports" / PLAN).glob("*.json")).read_text())
    extra = extras[0]
    assert extra["run_id"] == dr.run_id and extra["status"] == "complete"
    assert extra["audience"] == summary["audience"]
    assert extra["per_touch"] == summary["per_touch"]
    sent = sum(n for key, n in summary["outcomes"].items() if key.endswith("|sent"))
    assert extra["outcomes"]["sent"] == sent > 0
