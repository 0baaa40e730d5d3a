"""Delivery through Airflow: channel Connections, the kill switch Variable, the run's end state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from devtools.gateway import Gateway

PLAN = "push_coupon_gw"


ROOT = Path(__file__).resolve().parents[2]


def _write_plan(dags: Path) -> Path:
    """A DAGs folder of its own (dag.test() syncs the DAG's bundle): the loader plus one plan."""
    folder = dags / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", dags / "c2b_plans.py")
    plan = {
        "id": PLAN,
        "audience": {"segment": "cancelled_for_reason.sql", "params": {"reason": "price_too_low", "days": 30}},
        "touches": [{"name": "coupon_push", "channel": "push",  # connection: default c2b_push
                     "template": "+{{ offer.amount | int }} on your next sale", "assets": {"title": "Coupon"},
                     "offer": {"type": "price_up_coupon", "amount": 30}}],
        # two shards per deliver task: the grouped mapping, its UI labels and the report's flattening
        "delivery": {"shards": 4, "shards_per_task": 2, "page_size": 50, "concurrency": 8, "retries": 0,
                     "rate_limit": 5000},
        "reentry": {"after_days": 0},  # the second run below targets the same users again
    }
    (folder / f"{PLAN}.yaml").write_text(yaml.safe_dump(plan))
    return folder


def _states(dr) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in dr.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(getattr(ti.state, "value", ti.state)))
    return out


@pytest.fixture
def gw_env(c2b_env: Path, monkeypatch: pytest.MonkeyPatch):
    with Gateway() as gw:
        host, port = gw.server.server_address[:2]
        monkeypatch.setenv("AIRFLOW_CONN_C2B_PUSH", json.dumps(
            {"conn_type": "http", "host": host, "port": port, "schema": "push", "password": "tok",
             "extra": {"batch_size": 25, "timeout": 5}}))
        yield gw


def test_push_plan_through_airflow_then_kill_switch_variable_fails_the_shards(
        gw_env: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, c2b_env: Path) -> None:
    from c2b.airflow.dag_factory import build_dags

    dags_folder = tmp_path / "dags"
    plans = _write_plan(dags_folder)
    # dag.test() re-syncs the bundle folder, which Airflow fixed at import (settings.DAGS_FOLDER):
    # point both at this test's folder, or the run depends on which test imported Airflow first.
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(dags_folder))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    dags, errors = build_dags(plans)
    assert not errors
    dr = dags[PLAN].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    summary = json.loads(next((c2b_env / "reports" / PLAN).glob("*.json")).read_text())
    delivers = sorted((ti.map_index, ti.rendered_map_index) for ti in dr.get_task_instances()
                      if ti.task_id == "deliver")
    assert delivers == [(0, "shards 1-2"), (1, "shards 3-4")], delivers
    assert summary["status"] == "complete" and summary["shards"]["delivered"] == [1, 2, 3, 4], summary
    sent = summary["outcomes"]["all|coupon_push|sent"]
    assert sent == len(gw_env.record.accepted) > 50 and gw_env.record.duplicates == 0
    assert set(gw_env.record.paths) == {"/push/batch"}
    body = next(iter(gw_env.record.accepted.values()))
    assert body["title"] == "Coupon" and body["offer"]["amount"] == 30 and body["body"].startswith("+30")

    # The UI's switch: an Airflow Variable naming the plan. Every shard stops before its first
    # page, fails without retry, and the run is marked failed in the grid.
    monkeypatch.setenv("AIRFLOW_VAR_C2B_KILL_SWITCH", json.dumps([PLAN]))
    before = gw_env.record.requests
    dr = dags[PLAN].test()
    assert str(getattr(dr.state, "value", dr.state)) == "failed"
    states = _states(dr)
    assert set(states["deliver"]) == {"failed"} and states["report"] == ["upstream_failed"]
    assert states["cleanup"] == ["success"]
    assert gw_env.record.requests == before


def test_users_outside_send_hours_reschedule_the_task_for_their_morning(
        gw_env: Gateway, redis_client, tmp_path: Path) -> None:
    """The glue turns parked users into AirflowRescheduleException at their opening time."""
    from datetime import UTC, datetime, timedelta

    from airflow.sdk.exceptions import AirflowRescheduleException
    from c2b.airflow.resources import deliver_shard

    from devtools.deliverkit import load_audience, make_plan, plan_dict

    now = datetime.now(UTC)
    opens, closes = now + timedelta(hours=2), now + timedelta(hours=3)
    data = plan_dict("p_resched", page_size=20)
    data["window"] = {"send_hours": f"{opens:%H:%M}-{closes:%H:%M}", "timezone": "UTC"}
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", [f"n{i}" for i in range(30)], tmp_path)
    with pytest.raises(AirflowRescheduleException) as info:
        deliver_shard(plan, "r1", 1, {})
    assert info.value.reschedule_date == opens.replace(second=0, microsecond=0)
    assert gw_env.record.requests == 0


def test_dry_run_sends_nothing_and_writes_no_ledger(gw_env: Gateway, redis_client, tmp_path: Path) -> None:
    from c2b.airflow.resources import deliver_shard

    from devtools.deliverkit import load_audience, make_plan, plan_dict

    plan = make_plan(plan_dict("p_dry", touches=2))
    load_audience(redis_client, plan, "r1", [f"d{i}" for i in range(30)], tmp_path)
    stats = deliver_shard(plan, "r1", 1, {"dry_run": True, "only_touches": ["t1"]})
    assert stats["counts"] == {"all|t1|dry_run": 30} and stats["users"] == 30
    assert gw_env.record.requests == 0 and not redis_client.exists("c2b:{p_dry:r1:1}:ledger")


def test_a_task_of_several_shards_sends_each_and_reschedules_for_the_earliest_parked_user(
        gw_env: Gateway, redis_client, tmp_path: Path) -> None:
    """deliver_shards: every shard of the group is sent before the task reschedules for parked users."""
    from datetime import UTC, datetime, timedelta

    from airflow.sdk.exceptions import AirflowRescheduleException
    from c2b.airflow.resources import deliver_shards

    from devtools.deliverkit import load_audience, make_plan, plan_dict

    plan = make_plan(plan_dict("p_group", shards=2, page_size=20))
    shards = load_audience(redis_client, plan, "r1", [f"g{i}" for i in range(60)], tmp_path)
    stats = deliver_shards(plan, "r1", sorted(shards), {})
    assert [st["shard"] for st in stats] == [1, 2]
    assert sum(st["counts"].get("all|t0|sent", 0) for st in stats) == 60 == len(gw_env.record.accepted)
    # The outbox too (a channel holding a file: each shard gets its own, its send loop closes it)
    plan = make_plan(plan_dict("p_group_o", channel="outbox", shards=2, page_size=20))
    shards = load_audience(redis_client, plan, "r1", [f"o{i}" for i in range(60)], tmp_path)
    stats = deliver_shards(plan, "r1", sorted(shards), {})
    assert [st["counts"] for st in stats] == [{"all|t0|sent": shards[1]}, {"all|t0|sent": shards[2]}]

    now = datetime.now(UTC)
    opens = now + timedelta(hours=2)
    data = plan_dict("p_group_w", shards=2, page_size=20)
    data["window"] = {"send_hours": f"{opens:%H:%M}-{now + timedelta(hours=3):%H:%M}", "timezone": "UTC"}
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", [f"w{i}" for i in range(40)], tmp_path)
    before = gw_env.record.requests
    with pytest.raises(AirflowRescheduleException) as info:
        deliver_shards(plan, "r1", [1, 2], {})
    assert info.value.reschedule_date == opens.replace(second=0, microsecond=0)
    assert gw_env.record.requests == before
    parked = [redis_client.zcard(f"c2b:{{p_group_w:r1:{s}}}:deferred") for s in (1, 2)]
    assert all(parked) and sum(parked) == 40  # both shards had their pass before the reschedule
