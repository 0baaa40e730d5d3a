"""The demo plan, end to end through Airflow's ``dag.test()`` on real Redis and a real DuckDB file."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from c2b.airflow.dag_factory import find_plan_file
from c2b.hashing import VariantPicker
from c2b.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLAN = "cancelled_price_coupon"

# Written independently of include/sql/segments/: who cancelled for price in the last 30 days.
INDEPENDENT = """
    SELECT DISTINCT CAST(c.uid AS VARCHAR) FROM order_cancellations c JOIN users u USING (uid)
    WHERE c.reason = 'price_too_low' AND NOT u.opted_out
      AND c.cancelled_at >= current_date - INTERVAL 30 DAY
"""


@pytest.fixture
def demo_dag():
    from c2b.airflow.dag_factory import build_dags

    dags, errors = build_dags(ROOT / "dags" / "plans", PLAN)
    assert not errors
    return dags[PLAN]


def _outbox_lines(data_dir: Path) -> list[dict]:
    files = list((data_dir / "outbox" / PLAN).rglob("*.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_demo_plan_end_to_end(c2b_env: Path, demo_warehouse: Path, redis_client, demo_dag, capsys) -> None:
    dr = demo_dag.test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"

    segment = {r[0] for r in duckdb.connect(str(demo_warehouse), read_only=True).execute(INDEPENDENT).fetchall()}
    # The growth line keeps 5% of its users out of all its plans (the same users every run).
    from c2b.plan.lines import line_of

    holdout = line_of(find_plan_file(ROOT / "dags" / "plans", PLAN)).holdout
    held = pa.array(sorted(segment))
    held = set(held.filter(pa.array(holdout.members(held))).to_pylist())
    expected = segment - held
    assert len(expected) > 100 and 0.03 < len(held) / len(segment) < 0.07
    plan = load_plan(find_plan_file(ROOT / "dags" / "plans", PLAN))
    picker = VariantPicker(plan.salt, plan.variant_weights)
    targeted = {u for u in expected if picker.pick(u.encode()) == "coupon"}
    assert len(targeted) <= plan.touches[0].offer.budget.coupons  # the demo budget is far above this audience

    messages = _outbox_lines(c2b_env)
    per_touch = Counter(m["touch"] for m in messages)
    assert per_touch == {"coupon_push": len(targeted)}
    uids = Counter(m["uid"] for m in messages)
    assert set(uids) == targeted and max(uids.values()) == 1, "every targeted uid exactly once"
    assert len({m["idempotency_key"] for m in messages}) == len(messages)
    assert all("+30 CNY" in m["text"] and m["offer"]["type"] == "price_up_coupon" for m in messages)

    report_files = list((c2b_env / "reports" / PLAN).glob("*.json"))
    summary = json.loads(report_files[0].read_text())
    assert summary["audience"]["kept"] == len(expected)
    assert summary["audience"]["global_holdout"] == len(held)
    assert summary["budgets"]["coupon_push"]["coupons"] == len(targeted)
    # The audit trail: the plan file's hash, the repository's commit, trigger, params, segments, code.
    import hashlib
    import subprocess

    audit = summary["audit"]
    plan_file = find_plan_file(ROOT / "dags" / "plans", PLAN)
    assert audit["plan_sha256"] == hashlib.sha256(plan_file.read_bytes()).hexdigest()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert audit["git_commit"] == head
    assert audit["trigger"] == "manual" and audit["triggered_by"]  # dag.test() makes a manual run
    assert audit["params"] == {"dry_run": False, "sample": None, "only_touches": []}
    segment = ROOT / "include" / "sql" / "segments" / "cancelled_for_reason.sql"
    assert audit["segments"] == {"cancelled_for_reason.sql": hashlib.sha256(segment.read_bytes()).hexdigest()}
    assert audit["line"] == "growth" and audit["code"]["engine_sha256"]
    from c2b.cli import main as cli

    assert cli(["audit", PLAN]) == 0
    listed = capsys.readouterr().out
    assert dr.run_id in listed and audit["plan_sha256"][:12] in listed and head[:12] in listed
    # The report task stored the audit with the report in the results store, which `c2b audit` reads:
    # the run stays listed (from the store, not a report file) once its report file is gone.
    from c2b.airflow.resources import get_results_store

    store = get_results_store()
    assert store.audit(PLAN, dr.run_id) == {**audit, "run": dr.run_id, "status": "complete",
                                           "reported_at": store.audit(PLAN, dr.run_id)["reported_at"]}
    assert store.stored_report(PLAN, dr.run_id)["outcomes"] == summary["outcomes"]
    report_files[0].unlink()
    assert cli(["audit", PLAN]) == 0
    listed = capsys.readouterr().out
    line = next(row for row in listed.splitlines() if row.startswith(dr.run_id))
    assert audit["plan_sha256"][:12] in line and head[:12] in line and "(report file)" not in line
    assert '"sample": null' in line and f"by {audit['triggered_by']} (manual)" in line and "line growth" in line
    assert cli(["results", PLAN]) == 0
    assert f"commit {head[:12]}" in capsys.readouterr().out  # `c2b results` prints the run's audit too
    assert summary["outcomes"]["coupon|coupon_push|sent"] == len(targeted)
    assert summary["outcomes"]["control|-|holdout"] == len(expected) - len(targeted)
    assert summary["status"] == "complete"

    # The run's keys are gone from Redis, its ledger (the record of what was sent, with each shard's
    # totals) and its offer budget's reservations moved to the run's archive file, the contact and
    # re-entry histories to their files; what outlives the run in Redis is the frequency-cap counts
    # and the budget's counter (one hash, which report reads), each with a TTL.
    leftover = [k.decode() for k in redis_client.scan_iter("c2b:*")]
    run_keys = [k for k in leftover if not k.startswith("c2b:fcap:")]
    assert run_keys == [f"c2b:budget:{{{PLAN}:coupon_push:{dr.run_id}}}:n"]
    assert all(redis_client.ttl(k) > 0 for k in leftover)
    from c2b.delivery import contacts, reentry

    assert contacts.history_archive().users() == len(targeted)  # sent users
    assert reentry.history_archive(PLAN).users() == len(expected)  # sent and control users entered the plan
    from c2b.delivery.ledger_archive import archive_path, read_archive

    archived = read_archive(archive_path(PLAN, dr.run_id))
    assert archived and all(re.search(r":(ledgers?|stats|codes|out:\d+|pages|pg:\d+:\d+)$", k.name)
                            or k.name.startswith("c2b:budget:") for k in archived)
    assert f"c2b:budget:{{{PLAN}:coupon_push:{dr.run_id}}}:r:{dr.run_id}:1" in {k.name for k in archived}
    assert all(0 < k.expire_at_ms - time.time() * 1000 <= 7 * 24 * 3600 * 1000 for k in archived)


def test_rerun_of_same_run_sends_nothing_twice(c2b_env: Path, demo_warehouse: Path, redis_client, demo_dag) -> None:
    """Clearing a finished run re-runs every task; the ledger makes the second pass send nothing."""
    dr = demo_dag.test(run_after=None)
    first = len(_outbox_lines(c2b_env))
    from c2b import steps
    from c2b.audience.warehouse import DuckDBWarehouse
    from c2b.channels import ChannelConfig, make_channel
    from c2b.plan.lines import line_of

    plan = load_plan(find_plan_file(ROOT / "dags" / "plans", PLAN))
    # The run's cleanup deleted its staging file (#11.10): a cleared run extracts again.
    line = line_of(find_plan_file(ROOT / "dags" / "plans", PLAN))  # its global holdout, as the DAG applies it
    extract = steps.step_extract(plan, dr.run_id, DuckDBWarehouse(demo_warehouse),
                                 holdout=line.holdout if line else None)
    shards = steps.step_load(plan, dr.run_id, redis_client, extract)
    sent = 0
    for shard in shards:
        ch = {"coupon_push": make_channel("outbox", ChannelConfig(run_dir=str(c2b_env / "outbox" / PLAN / "again")))}
        stats = steps.step_deliver(plan, dr.run_id, shard, redis_client, ch, lambda: False)
        assert stats["attempt"].get("skipped_final", 0) > 0 and not stats["attempt"].get("resent"), stats
        sent += stats["counts"].get("coupon|coupon_push|sent", 0)  # cumulative: the first pass's, not doubled
    assert len(_outbox_lines(c2b_env)) == first == sent
