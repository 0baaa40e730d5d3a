"""Results end to end: a plan run through ``dag.test()`` logs every user, the demo clock advances,
attribution counts conversions, and the counts equal an independent DuckDB query; the results DAG
and ``c2b results`` read the same store."""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path

import duckdb
import mmh3
import pytest
from c2b.airflow import resources
from c2b.airflow.dag_factory import find_plan_file
from c2b.hashing import VariantPicker
from c2b.plan.lines import line_of
from c2b.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLAN = "cancelled_price_coupon"

# Written independently of the goal SQL and of c2b.results.attribution: per variant, users with an
# order not cancelled in the 7 days after their touch (their earliest logged time), before the clock.
INDEPENDENT = """
    WITH touched AS (
        SELECT uid, MIN(variant) AS variant, MIN(touched_at) AS t FROM r.c2b_delivery_log
        WHERE plan_id = $plan AND run_id = $run GROUP BY uid)
    SELECT touched.variant, COUNT(DISTINCT touched.uid), SUM(o.quoted_price)
    FROM touched JOIN w.orders o ON CAST(o.uid AS VARCHAR) = touched.uid
    WHERE o.status <> 'cancelled' AND o.created_at >= touched.t AND o.created_at < touched.t + INTERVAL 7 DAY
      AND o.created_at < $clock
    GROUP BY touched.variant
"""
AUDIENCE = """
    SELECT DISTINCT CAST(c.uid AS VARCHAR) FROM order_cancellations c JOIN users u USING (uid)
    WHERE c.reason = 'price_too_low' AND NOT u.opted_out AND c.cancelled_at >= current_date - INTERVAL 30 DAY
"""


@pytest.fixture
def warehouse_copy(c2b_env: Path, demo_warehouse: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own warehouse (the demo clock writes post-touch orders into it)."""
    path = c2b_env.parent / "warehouse.duckdb"
    shutil.copy(demo_warehouse, path)
    monkeypatch.setenv("AIRFLOW_CONN_C2B_WAREHOUSE", f'{{"conn_type": "duckdb", "host": "{path}"}}')
    return path


def test_run_log_attribution_equal_an_independent_query(warehouse_copy: Path, c2b_env: Path, redis_client,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from c2b import steps
    from c2b.airflow.dag_factory import build_dags
    from c2b.cli import demo_results, main
    from c2b.results.attribution import attribute
    from c2b.results.delivery_log import log_shard

    plan = load_plan(find_plan_file(ROOT / "dags" / "plans", PLAN))
    dags, _ = build_dags(ROOT / "dags" / "plans", PLAN)
    dr = dags[PLAN].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    store = resources.get_results_store()
    assert store.path == c2b_env / "results.duckdb"  # type: ignore[attr-defined]  # no connection: the default

    # The log holds every user of the audience once per touch, holdout users included.
    con = duckdb.connect(str(warehouse_copy), read_only=True)
    segment = {r[0] for r in con.execute(AUDIENCE).fetchall()}
    con.close()
    # The growth line's global holdout (5%, salted murmur3 of the uid, #14) is never loaded.
    line = line_of(find_plan_file(ROOT / "dags" / "plans", PLAN))
    assert line is not None and line.holdout is not None
    share, salt = line.holdout.share, line.holdout.salt
    audience = {u for u in segment
                if mmh3.hash(f"{salt}:{u}".encode(), 0, signed=False) % 10_000 >= round(share * 10_000)}
    assert 0 < len(segment) - len(audience) < len(segment) * 0.1
    picker = VariantPicker(plan.salt, plan.variant_weights)
    expected = Counter(picker.pick(u.encode()) for u in audience)
    users = store.log_users(PLAN, dr.run_id)
    assert {u for u, *_ in users} == audience
    assert Counter(v for _, v, _, _ in users) == expected
    assert {(t["touch"], t["variant"], t["outcome"]): t["count"] for t in store.touch_outcomes(PLAN, dr.run_id)} == {
        ("coupon_push", "coupon", "sent"): expected["coupon"], ("-", "control", "holdout"): expected["control"]}

    # A retried deliver attempt (same run, same shard) writes no second copy of its rows.
    rows = store.log_count(PLAN, dr.run_id)
    # (cleanup deleted the run's staging file, #11.10: extract the same run again to reload its shards)
    extract = steps.step_extract(plan, dr.run_id, resources.get_warehouse(), holdout=line.holdout)
    shards = steps.step_load(plan, dr.run_id, redis_client, extract)
    assert log_shard(store, redis_client, plan, dr.run_id, shards[0]) > 0
    assert store.log_count(PLAN, dr.run_id) == rows == len(audience)

    # Advance the demo clock (post-touch orders), attribute, and print the table as `make demo` does.
    capsys.readouterr()
    assert demo_results(PLAN, dr.run_id) == 0
    table = capsys.readouterr().out
    assert "results  plan cancelled_price_coupon" in table and "split (SRM)  ok" in table
    first = min(t for _, _, t, _ in users)
    # Orders just outside the window, and before the touch, of a control user: never counted.
    control_uid = next(u for u, v, _, _ in users if v == "control")
    con = duckdb.connect(str(warehouse_copy))
    con.execute("INSERT INTO orders VALUES (9999999991, $u, 'iPhone 13', 'phone', 2300, 'completed', $a), "
                "(9999999992, $u, 'iPhone 13', 'phone', 2300, 'completed', $b)",
                {"u": int(control_uid), "a": first + timedelta(days=7, seconds=1), "b": first - timedelta(seconds=1)})
    con.close()
    clock = max(t for _, _, t, _ in users) + timedelta(days=7, minutes=1)
    result = attribute(plan, dr.run_id, store, resources.get_warehouse(), as_of=clock)

    con = duckdb.connect()
    con.execute(f"ATTACH '{store.path}' AS r (READ_ONLY)")  # type: ignore[attr-defined]
    con.execute(f"ATTACH '{warehouse_copy}' AS w (READ_ONLY)")
    independent = {v: (n, float(s)) for v, n, s in con.execute(
        INDEPENDENT, {"plan": PLAN, "run": dr.run_id, "clock": clock}).fetchall()}
    con.close()
    converted = {v: a["converted"] for v, a in result["sold"]["variants"].items()}
    assert converted == {v: n for v, (n, _) in independent.items()}
    assert {v: a["value_sum"] for v, a in result["sale_value"]["variants"].items()} == pytest.approx(
        {v: s for v, (_, s) in independent.items()})
    assert all(n > 0 for n, _ in independent.values())

    # Re-running attribution at the same clock gives the same numbers; an earlier clock changes nothing.
    assert attribute(plan, dr.run_id, store, resources.get_warehouse(), as_of=clock)["sold"] == result["sold"]
    attribute(plan, dr.run_id, store, resources.get_warehouse(), as_of=first + timedelta(days=1))
    assert store.result(PLAN, dr.run_id, "sold") == result["sold"]

    # `c2b results` prints the same figures the page holds.
    assert main(["results", PLAN, "--run", dr.run_id]) == 0
    out = capsys.readouterr().out
    for v, (n, _) in independent.items():
        assert f"{n:>9,}" in out, (v, out)
    # --attribute counts now: an earlier clock than the demo's, so the stored figures stand.
    assert main(["results", PLAN, "--attribute"]) == 0
    assert store.result(PLAN, dr.run_id, "sold") == result["sold"]
    capsys.readouterr()
    assert main(["results", "nobody"]) == 1
    assert "has no delivered run" in capsys.readouterr().err


def test_results_dag_counts_open_runs_as_of_its_interval(warehouse_copy: Path, c2b_env: Path, redis_client) -> None:
    from c2b.airflow.dag_factory import build_dags
    from c2b.airflow.results_dag import results_dag_id

    dags, _ = build_dags(ROOT / "dags" / "plans", PLAN)
    dr = dags[PLAN].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    # A worker parsing for the results DAG's task builds that plan file's DAGs only.
    results, _ = build_dags(ROOT / "dags" / "plans", results_dag_id(PLAN))
    assert list(results) == [results_dag_id(PLAN)]
    rr = results[results_dag_id(PLAN)].test()
    assert str(getattr(rr.state, "value", rr.state)) == "success"
    store = resources.get_results_store()
    payload = store.result(PLAN, dr.run_id, "sold")
    assert payload is not None and set(payload["variants"]) == {"coupon", "control"}
    assert sum(a["assigned"] for a in payload["variants"].values()) == store.log_count(PLAN, dr.run_id)
