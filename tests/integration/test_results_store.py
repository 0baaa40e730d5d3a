"""The results store on DuckDB and on the real PostgreSQL: idempotent delivery log, monotone results,
and attribution giving the same numbers on either warehouse and store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import airflow  # noqa: F401 - Airflow sets up logging at import: here, not under a test's capsys
import duckdb
import pytest
from c2b.airflow.dag_factory import find_plan_file
from c2b.audience.warehouse import DbApiWarehouse, DuckDBWarehouse
from c2b.hashing import VariantPicker
from c2b.plan.load import load_plan
from c2b.results.attribution import AttributionError, attribute, build_page, goal_info
from c2b.results.store import DbApiResultsStore, DuckDBResultsStore, ResultsStore

from devtools.demo_warehouse import add_post_touch_orders
from devtools.postgres import connect, drop_schema, ensure_running, load_demo

ROOT = Path(__file__).resolve().parents[2]
PLAN = load_plan(find_plan_file(ROOT / "dags" / "plans", "cancelled_price_ab"))
T0 = datetime(2026, 11, 27, 10, 0)


@pytest.fixture(scope="module")
def pg_store_schema() -> Iterator[str]:
    ensure_running()
    schema = f"c2b_results_{os.getpid()}"
    drop_schema(schema)
    conn = connect()
    with conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    conn.close()
    yield schema
    drop_schema(schema)


@pytest.fixture(params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultsStore]:
    if request.param == "duckdb":
        yield DuckDBResultsStore(tmp_path / "results.duckdb")
        return
    schema = request.getfixturevalue("pg_store_schema")
    conn = connect(schema)
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS c2b_delivery_log, c2b_runs, c2b_results, c2b_audit")
    conn.close()
    yield DbApiResultsStore(lambda: connect(schema), name="test-postgres")


def _rows(n: int, outcome: str = "sent", at: datetime = T0) -> list[tuple]:
    return [("p", "r1", "coupon", "push", f"u{i}", outcome, None, at) for i in range(n)]


def test_delivery_log_is_idempotent_and_keeps_the_first_time(store: ResultsStore) -> None:
    store.register_run("p", "r1", {"coupon": 80, "control": 20}, ["control"], T0)
    holdouts = [("p", "r1", "control", "-", f"c{i}", "holdout", None, T0) for i in range(5)]
    assert store.write_log(_rows(23) + holdouts, batch_rows=7) == 28
    # A retried attempt writes the same rows again: no new rows, the first time kept.
    later = T0 + timedelta(hours=2)
    assert store.write_log(_rows(23, at=later) + holdouts, batch_rows=7) == 28
    assert store.log_count("p", "r1") == 28
    # A row whose outcome changed (deferred -> sent, a failure) takes the new outcome and time.
    store.write_log([("p", "r1", "coupon", "push", "u3", "failed", "HTTP 500: it's 100% down?", later)])
    users = {u: (v, t, reached) for u, v, t, reached in store.log_users("p", "r1")}
    assert users["u3"] == ("coupon", later, 0) and users["u4"] == ("coupon", T0, 1) and users["c1"][2] == 1
    assert store.variant_counts("p", "r1") == {"coupon": (23, 22), "control": (5, 5)}
    assert {(t["outcome"], t["reason"]): t["count"] for t in store.touch_outcomes("p", "r1")} == {
        ("sent", None): 22, ("failed", "HTTP 500: it's 100% down?"): 1, ("holdout", None): 5}
    # The run keeps its first registration time.
    store.register_run("p", "r1", {"coupon": 80, "control": 20}, ["control"], later)
    assert store.runs("p") == [("r1", T0)]


def test_the_bulk_log_write_replaces_an_earlier_attempt_and_keeps_text_exact(store: ResultsStore) -> None:
    """One bulk chunk (Arrow on DuckDB, COPY on PostgreSQL) or several: a retried attempt replaces
    its rows (same outcome: first time kept; new outcome: new time), text round-trips exactly."""
    odd = ["tab\tuid", "new\nline", "back\\slash", "\\N", "", "ü用户", "cr\r"]
    rows = _rows(2500) + [("p", "r1", "coupon", "push", u, "sent", None, T0) for u in odd]
    rows[7] = ("p", "r1", "coupon", "push", "u7", "failed", "", T0)  # an empty reason is not NULL
    rows[8] = ("p", "r1", "coupon", "push", "u8", "failed", "a\tb\\c\nd \\N", T0)
    assert store.write_log(rows) == len(rows)
    later = T0 + timedelta(hours=1)
    again = [(p, r, v, t, u, "sent" if u != "u9" else "deferred", None if u != "u7" else "x", later)
             for p, r, v, t, u, _, _, _ in rows]
    assert store.write_log(again, batch_rows=1000) == len(rows)
    assert store.log_count("p", "r1") == len(rows)
    users = {u: t for u, _, t, _ in store.log_users("p", "r1")}
    assert set(users) == {f"u{i}" for i in range(2500)} | set(odd)
    assert users["u0"] == T0 and users["tab\tuid"] == T0  # same outcome: the first time kept
    assert users["u7"] == later and users["u9"] == later  # a new outcome: its own time
    outcomes = {(t["outcome"], t["reason"]): t["count"] for t in store.touch_outcomes("p", "r1")}
    assert outcomes == {("sent", None): len(rows) - 2, ("sent", "x"): 1, ("deferred", None): 1}
    assert store.write_log(rows[:9]) == 9  # back to the first attempt's outcomes
    outcomes = {(t["outcome"], t["reason"]): t["count"] for t in store.touch_outcomes("p", "r1")}
    assert outcomes[("failed", "")] == 1 and outcomes[("failed", "a\tb\\c\nd \\N")] == 1
    # Same outcome, another variant or reason: both are taken, the first time kept.
    store.write_log([("p", "r1", "control", "push", "u10", "sent", None, later),
                     ("p", "r1", "coupon", "push", "u11", "sent", "r", later)])
    assert {u: (v, t) for u, v, t, _ in store.log_users("p", "r1")}["u10"] == ("control", T0)
    assert {(t["outcome"], t["reason"]): t["count"] for t in store.touch_outcomes("p", "r1")}[("sent", "r")] == 1


_HOLD_LOCK = ("import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); con.begin(); "
              "print('held', flush=True); time.sleep(float(sys.argv[2]))")


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process (a parallel deliver task) holding the file's write lock for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_duckdb_writer_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    path = tmp_path / "results.duckdb"
    DuckDBResultsStore(path).ensure_schema()
    holder = _hold_write_lock(path, 2.0)
    started = time.monotonic()
    try:
        assert DuckDBResultsStore(path).write_log(_rows(3)) == 3  # waited, then wrote
    finally:
        holder.wait(30)
    assert time.monotonic() - started >= 1.0
    assert DuckDBResultsStore(path).log_count("p", "r1") == 3


def test_a_duckdb_writer_gives_up_after_its_lock_timeout_with_duckdbs_error(tmp_path: Path) -> None:
    path = tmp_path / "results.duckdb"
    DuckDBResultsStore(path).ensure_schema()
    holder = _hold_write_lock(path, 5.0)
    try:
        with pytest.raises(duckdb.IOException, match="lock"):
            DuckDBResultsStore(path, lock_timeout=0.5).write_log(_rows(3))
    finally:
        holder.kill()
        holder.wait(30)
    assert DuckDBResultsStore(path).log_count("p", "r1") == 0


def test_a_duckdb_log_written_with_the_old_primary_key_is_moved_once_and_keeps_its_rows(tmp_path: Path) -> None:
    from c2b.results.store import DDL

    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute(DDL[0])  # the keyed table of earlier versions
    con.executemany("INSERT INTO c2b_delivery_log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _rows(3, at=T0))
    con.close()
    store = DuckDBResultsStore(path)
    later = T0 + timedelta(hours=1)
    store.write_log([*_rows(2, at=later), ("p", "r1", "coupon", "push", "u9", "failed", "http 500", later)])
    assert store.log_users("p", "r1") == [
        ("u0", "coupon", T0, 1), ("u1", "coupon", T0, 1), ("u2", "coupon", T0, 1), ("u9", "coupon", later, 0)]
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'c2b_delivery_log' "
                       "AND constraint_type = 'PRIMARY KEY'").fetchone() == (0,)
    assert con.execute("SELECT uid, touched_at FROM c2b_delivery_log ORDER BY uid").fetchall() == [
        ("u0", T0), ("u1", T0), ("u2", T0), ("u9", later)]  # same outcome: the first time is kept
    con.close()


def test_a_shard_logged_again_replaces_its_rows_and_rows_without_parts_are_never_doubled(store: ResultsStore) -> None:
    part = ("p", "r1", "shard 1")
    later = T0 + timedelta(hours=1)
    assert store.write_log(_rows(3, at=T0), part=part) == 3  # first write of the shard (DuckDB: appended)
    retry = [*_rows(2, at=later), ("p", "r1", "coupon", "push", "u2", "failed", "http 500", later)]
    assert store.write_log(retry, part=part) == 3  # its retry: replaces
    assert store.log_users("p", "r1") == [("u0", "coupon", T0, 1), ("u1", "coupon", T0, 1),
                                          ("u2", "coupon", later, 0)]
    store.write_log([("p", "r2", "coupon", "push", "u0", "sent", None, T0)])  # a row written without a part
    assert store.write_log([("p", "r2", "coupon", "push", "u0", "sent", None, later)], part=("p", "r2", "shard 1")) == 1
    assert store.log_users("p", "r2") == [("u0", "coupon", T0, 1)]  # replaced (first time kept), not doubled
    assert store.log_count("p", "r1") == 3 and store.log_count("p", "r2") == 1


def _shard_table(shard: int, n: int, at: datetime, outcome: str = "sent", plan_id: str = "p",
                 run_id: str = "r1") -> object:
    """A shard's rows as the bulk reader gives them: an Arrow table, the repeated columns dictionary-encoded."""
    import pyarrow as pa

    def same(value: str) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int8()), pa.array([value]))

    return pa.table({"plan_id": same(plan_id), "run_id": same(run_id), "variant": same("coupon"), "touch": same("push"),
                     "uid": pa.array([f"s{shard}u{i}" for i in range(n)]), "outcome": pa.array([outcome] * n),
                     "reason": pa.nulls(n, pa.string()), "touched_at": pa.array([at] * n, pa.timestamp("us"))})


def test_several_shards_written_at_once_are_logged_and_a_retry_replaces_them(store: ResultsStore) -> None:
    """A deliver task writes its shards' rows together (``write_logs``): on DuckDB, new shards in
    one insert; a retry of the task writes them again and replaces them; a shard among them that
    is new still counts once."""
    run = {"plan_id": "p", "run_id": "r1", "weights": {"coupon": 1}, "controls": [], "logged_at": T0, "goal": None}
    parts = [(("p", "r1", f"shard {k}"), _shard_table(k, 300, T0)) for k in (1, 2, 3)]
    assert store.write_logs(parts, run=run) == 900
    assert store.log_count("p", "r1") == 900 and store.runs("p") == [("r1", T0)]
    later = T0 + timedelta(hours=1)
    retry = [(("p", "r1", "shard 2"), _shard_table(2, 300, later, "failed")),
             (("p", "r1", "shard 3"), _shard_table(3, 300, later)),
             (("p", "r1", "shard 4"), _shard_table(4, 200, later))]
    assert store.write_logs(retry, run=run) == 800
    assert store.log_count("p", "r1") == 1100
    outcomes = {(t["outcome"], t["reason"]): t["count"] for t in store.touch_outcomes("p", "r1")}
    assert outcomes == {("sent", None): 800, ("failed", None): 300}
    times = {u: t for u, _, t, _ in store.log_users("p", "r1")}
    assert times["s1u0"] == T0 and times["s2u0"] == later and times["s3u0"] == T0 and times["s4u0"] == later
    assert store.write_logs([]) == 0


def test_a_deliver_tasks_log_batch_writes_once_it_holds_enough_and_when_told(tmp_path: Path) -> None:
    from c2b.results.delivery_log import DeliveryLogBatch

    store = DuckDBResultsStore(tmp_path / "results.duckdb")
    batch = DeliveryLogBatch(store, PLAN, "r1", rows_per_write=500)
    assert batch.add(None, 1, rows=_shard_table(1, 300, T0, plan_id=PLAN.id)) == 300
    assert store.log_count(PLAN.id, "r1") == 0  # held
    assert batch.add(None, 2, rows=_shard_table(2, 300, T0, plan_id=PLAN.id)) == 300
    assert store.log_count(PLAN.id, "r1") == 600  # 600 >= 500: both shards written
    assert batch.add(None, 3, rows=_shard_table(3, 100, T0, plan_id=PLAN.id)) == 100
    assert store.log_count(PLAN.id, "r1") == 600
    assert batch.flush() == 100 and batch.flush() == 0  # the task's end
    assert store.log_count(PLAN.id, "r1") == 700 and [r for r, _ in store.runs(PLAN.id)] == ["r1"]


def test_keys_unique_says_when_the_insert_may_skip_distinct() -> None:
    import pyarrow as pa
    from c2b.results.delivery_log import keys_unique

    def table(uids: list[str], touch: str = "push", plan_id: str = "p") -> pa.Table:
        n = len(uids)
        return pa.table({"plan_id": pa.array([plan_id] * n), "run_id": pa.array(["r1"] * n),
                         "touch": pa.array([touch] * n), "uid": pa.array(uids)})

    assert keys_unique([table(["1", "2"]), table(["3"]), table(["1", "2"], touch="sms")])
    assert not keys_unique([table(["1", "2"]), table(["2", "5"])])  # uid 2 of push in two shards
    assert not keys_unique([table(["1", "1"])])
    assert not keys_unique([table(["u1", "u2"])])  # text uids: left to the store's DISTINCT ON
    assert not keys_unique([table(["1"]), table(["2"], plan_id="q")])
    assert not keys_unique([table(["7"]), table(["007"])])  # one integer: not told apart, so not unique
    assert keys_unique([_shard_table(1, 3, T0, plan_id="p")]) is False  # "s1u0": text
    assert keys_unique([]) is False


def test_the_log_batch_skips_distinct_only_for_unique_rows_and_a_repeat_is_logged_once(tmp_path: Path) -> None:
    import pyarrow as pa
    from c2b.results.delivery_log import DeliveryLogBatch

    def ints(first: int, n: int, run_id: str = "r1") -> pa.Table:
        t = _shard_table(0, n, T0, plan_id=PLAN.id, run_id=run_id)
        return t.set_column(t.schema.get_field_index("uid"), "uid", pa.array([str(first + i) for i in range(n)]))

    store = DuckDBResultsStore(tmp_path / "results.duckdb")
    batch = DeliveryLogBatch(store, PLAN, "r1", rows_per_write=10_000)
    batch.add(None, 1, rows=ints(1000, 300))
    batch.add(None, 2, rows=ints(2000, 300))
    assert batch.flush() == 600 and store.log_count(PLAN.id, "r1") == 600
    batch = DeliveryLogBatch(store, PLAN, "r2", rows_per_write=10_000)
    batch.add(None, 1, rows=ints(1000, 300, "r2"))
    batch.add(None, 2, rows=ints(1200, 300, "r2"))  # 1200..1299 in both: DISTINCT ON keeps one row each
    batch.flush()
    assert store.log_count(PLAN.id, "r2") == 500


def test_a_failed_log_write_leaves_nothing_behind(store: ResultsStore) -> None:
    """Every chunk and the run's registration are one transaction: an error after the first chunk
    rolls all of it back."""
    def rows():
        yield from _rows(1500)
        raise RuntimeError("Redis went away")

    run = {"plan_id": "p", "run_id": "r1", "weights": {"coupon": 1}, "controls": [], "logged_at": T0, "goal": None}
    with pytest.raises(RuntimeError, match="went away"):
        store.write_log(rows(), batch_rows=1000, run=run)
    assert store.log_count("p", "r1") == 0 and store.runs("p") == []
    assert store.write_log(_rows(1500), batch_rows=1000, run=run) == 1500 and store.runs("p") == [("r1", T0)]


def _audit(run: str, recorded_at: str, user: str = "alice", dirty: bool | None = False) -> dict:
    """An audit record as :func:`c2b.results.audit.audit_record` returns it."""
    return {"plan": "p", "plan_file": "/dags/plans/growth/p.yaml", "plan_sha256": "ab" * 32,
            "git_commit": "fd41c0c" + "0" * 33, "git_dirty": dirty,
            "segments": {"cancelled_for_reason.sql": "cd" * 32, "recent_buyers.sql": None},
            "trigger": "manual", "triggered_by": user, "params": {"dry_run": False, "sample": 100, "only_touches": []},
            "code": {"c2b": "0.1.0", "engine_sha256": "3a5c7e9b1d2f4a6c", "airflow": "3.3.2"},
            "line": "growth", "recorded_at": recorded_at}


def test_the_audit_record_is_stored_with_the_report_and_read_back(store: ResultsStore) -> None:
    """Every field comes back as it went in (times as UTC ISO text), oldest run first; a re-run's
    report replaces its row; another plan's rows are not listed."""
    first = _audit("manual__1", "2026-11-27T10:00:02+00:00", dirty=None)
    second = _audit("scheduled__2", "2026-11-27T12:00:00+08:00", user="scheduled")
    second["trigger"], second["git_commit"] = "scheduled", None
    report = {"plan": "p", "run": "manual__1", "status": "complete", "outcomes": {"coupon|push|sent": 3}}
    store.save_audit("p", "scheduled__2", second, "incomplete", reported_at=T0)
    store.save_audit("p", "manual__1", first, "failed", report=report, reported_at=T0)
    store.save_audit("p", "manual__1", first, "complete", report=report, reported_at=T0 + timedelta(minutes=5))
    store.save_audit("other", "manual__1", _audit("manual__1", "2026-11-27T09:00:00+00:00"), "complete")
    got = store.audits("p")
    assert [r["run"] for r in got] == ["scheduled__2", "manual__1"]  # 04:00 UTC before 10:00 UTC
    one = store.audit("p", "manual__1")
    assert one == got[1]
    assert one == {**first, "run": "manual__1", "status": "complete", "reported_at": "2026-11-27T10:05:00+00:00"}
    assert got[0]["recorded_at"] == "2026-11-27T04:00:00+00:00" and got[0]["git_commit"] is None
    assert got[0]["git_dirty"] is False and got[0]["triggered_by"] == "scheduled"
    assert store.stored_report("p", "manual__1") == report and store.stored_report("p", "scheduled__2") is None
    assert store.audit("p", "manual__9") is None and store.audits("nothing") == []


def test_c2b_audit_reads_the_store_and_report_files_only_for_runs_it_lacks(
        c2b_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`c2b audit` lists the store's rows; a run known only from its report file is listed and marked;
    a plan with neither is an error naming both places."""
    import json

    from c2b.airflow.resources import get_results_store
    from c2b.cli import main

    old = {"plan": "p", "run": "manual__0", "status": "complete",
           "audit": _audit("manual__0", "2026-11-26T10:00:00+00:00", user="carol")}
    (c2b_env / "reports" / "p").mkdir(parents=True)
    (c2b_env / "reports" / "p" / "manual__0.json").write_text(json.dumps(old))
    (c2b_env / "reports" / "p" / "manual__1.json").write_text(json.dumps({"plan": "p", "run": "manual__1",
                                                                          "status": "complete"}))
    store = get_results_store()
    store.save_audit("p", "manual__1", _audit("manual__1", "2026-11-27T10:00:02+00:00"), "complete")
    assert main(["audit", "p"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"audit trail of p (results store {store.name})"
    by_run = {line.split()[0]: line for line in lines[1:]}
    assert set(by_run) == {"manual__0", "manual__1"}
    assert by_run["manual__1"].startswith("manual__1  complete  2026-11-27T10:00:02+00:00  plan abababababab  "
                                          "commit fd41c0c00000  by alice (manual)")
    assert '"sample": 100' in by_run["manual__1"] and "(report file)" not in by_run["manual__1"]
    assert "by carol (manual)" in by_run["manual__0"] and by_run["manual__0"].endswith("(report file)")
    assert main(["audit", "p", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["source"], r["triggered_by"]) for r in rows] == [
        ("manual__0", "report file", "carol"), ("manual__1", "results store", "alice")]  # oldest first
    assert main(["audit", "nothing_ran"]) == 1
    err = capsys.readouterr().err
    assert "has no reported run" in err and store.name in err and str(c2b_env / "reports" / "nothing_ran") in err


def test_results_never_go_back_to_an_earlier_clock(store: ResultsStore) -> None:
    assert store.save_result("p", "r1", "sold", T0 + timedelta(days=7), {"n": 2}, T0)
    assert not store.save_result("p", "r1", "sold", T0 + timedelta(days=1), {"n": 1}, T0)
    assert store.result("p", "r1", "sold") == {"n": 2}
    assert store.save_result("p", "r1", "sold", T0 + timedelta(days=7), {"n": 3}, T0)  # same clock: replaced
    assert store.result("p", "r1", "sold") == {"n": 3}


def test_page_of_missing_state_is_a_clear_lookup_error(store: ResultsStore) -> None:
    with pytest.raises(LookupError, match="has no delivered run in the results store"):
        build_page(store, "nobody")
    store.register_run("p", "r1", {"a": 1}, [], T0)
    store.write_log(_rows(3))
    with pytest.raises(LookupError, match="has no run 'r9'.*its runs: r1"):
        build_page(store, "p", "r9")
    page = build_page(store, "p")  # no goal, no attribution: counts and a note, never a traceback
    assert page["run_id"] == "r1" and page["uplifts"] == [] and "no goal" in page["note"]
    with pytest.raises(AttributionError, match="no delivery log for plan cancelled_price_ab run r1"):
        attribute(PLAN, "r1", store, warehouse=None)


# --- attribution: DuckDB and PostgreSQL give the same numbers ------------------------------------

@pytest.fixture(scope="module")
def run_users(demo_warehouse: Path) -> list[tuple[str, str]]:
    """The plan's audience in the demo warehouse with its variants (uid, variant)."""
    con = duckdb.connect(str(demo_warehouse), read_only=True)
    uids = [r[0] for r in con.execute(
        "SELECT DISTINCT CAST(c.uid AS VARCHAR) FROM order_cancellations c JOIN users u USING (uid) "
        "WHERE c.reason = 'price_too_low' AND NOT u.opted_out AND c.cancelled_at >= current_date - INTERVAL 30 DAY"
    ).fetchall()]
    con.close()
    picker = VariantPicker(PLAN.salt, PLAN.variant_weights)
    return [(u, picker.pick(u.encode())) for u in sorted(uids)]


@pytest.fixture(scope="module")
def warehouses(demo_warehouse: Path, run_users: list[tuple[str, str]],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A copy of the demo warehouse with the run's post-touch orders, and the same in PostgreSQL."""
    ensure_running()
    folder = tmp_path_factory.mktemp("attribution")
    copy = folder / "warehouse.duckdb"
    shutil.copy(demo_warehouse, copy)
    offers = {"coupon": "price_up_coupon", "red_packet": "red_packet"}
    assert add_post_touch_orders(copy, PLAN.id, "r1", [(u, offers.get(v), T0) for u, v in run_users]) > 0
    schema = f"c2b_attr_{os.getpid()}"
    load_demo(copy, schema, folder / "csv")
    yield copy, schema
    drop_schema(schema)


def _log(plan_users: list[tuple[str, str]]) -> list[tuple]:
    touch = {"coupon": "coupon_push", "red_packet": "red_packet_sms"}
    return [(PLAN.id, "r1", v, touch.get(v, "-"), u, "sent" if v in touch else "holdout", None, T0)
            for u, v in plan_users]


def test_attribution_is_the_same_on_duckdb_and_postgres(warehouses: tuple[Path, str], run_users: list,
                                                        pg_store_schema: str, tmp_path: Path) -> None:
    duck_path, schema = warehouses
    clock = T0 + timedelta(days=10)
    duck_store = DuckDBResultsStore(tmp_path / "results.duckdb")
    conn = connect(pg_store_schema)
    with conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS c2b_delivery_log, c2b_runs, c2b_results, c2b_audit")
    conn.close()
    pg_store = DbApiResultsStore(lambda: connect(pg_store_schema), name="test-postgres")
    results = []
    for store, warehouse in ((duck_store, DuckDBWarehouse(duck_path)),
                             (pg_store, DbApiWarehouse(lambda: connect(schema), name="pg"))):
        store.register_run(PLAN.id, "r1", PLAN.variant_weights, ["control"], T0, goal_info(PLAN.goal))
        store.write_log(_log(run_users))
        results.append(attribute(PLAN, "r1", store, warehouse, as_of=clock))
    duck, pg = results
    for metric in ("sold", "sale_value"):
        assert pg[metric]["variants"].keys() == duck[metric]["variants"].keys()
        for v, figures in duck[metric]["variants"].items():
            assert pg[metric]["variants"][v] == pytest.approx(figures, rel=1e-9), (metric, v)
        assert pg[metric]["daily"] == duck[metric]["daily"]
    assert sum(a["converted"] for a in duck["sold"]["variants"].values()) > 0
    pages = [build_page(s, PLAN.id) for s in (pg_store, duck_store)]
    assert pages[0]["variants"] == pages[1]["variants"] and pages[0]["uplifts"] == pages[1]["uplifts"]
    assert [v["converted"] for v in pages[0]["variants"]] == [duck["sold"]["variants"][v]["converted"]
                                                              for v in PLAN.variant_weights]


def _counted(store: ResultsStore, plan_id: str, arms: dict[str, tuple[int, int]], controls: list[str],
             weights: dict[str, int]) -> None:
    """A run with ``arms`` = {variant: (assigned, converted)} logged and attributed (rate metric)."""
    goal = {"primary": "sold", "kind": "rate", "method": "fixed", "window_days": 7, "metrics": {"sold": "rate"}}
    store.register_run(plan_id, "r1", weights, controls, T0, goal)
    rows = [(plan_id, "r1", v, "-" if v in controls else "push", f"{v}{i}", "holdout" if v in controls else "sent",
             None, T0) for v, (n, _) in arms.items() for i in range(n)]
    store.write_log(rows)
    payload = {"variants": {v: {"assigned": n, "reached": n, "converted": c, "value_sum": 0.0, "value_squares": 0.0}
                            for v, (n, c) in arms.items()},
               "daily": [], "as_of": (T0 + timedelta(days=3)).isoformat(), "first_touch": T0.isoformat()}
    store.save_result(plan_id, "r1", "sold", T0 + timedelta(days=3), payload, T0)


def test_page_without_control_says_why_and_srm_mismatch_comes_first(store: ResultsStore) -> None:
    _counted(store, "no_control", {"a": (500, 50), "b": (500, 60)}, [], {"a": 1, "b": 1})
    page = build_page(store, "no_control")
    assert page["uplifts"] == [] and "no control group" in page["note"]
    assert page["srm"]["ok"] is True and page["days_since_send"] == 3.0
    assert [(v["name"], v["converted"], v["rate"]) for v in page["variants"]] == [("a", 50, 0.1), ("b", 60, 0.12)]

    _counted(store, "skewed", {"t": (600, 90), "control": (400, 40)}, ["control"], {"t": 1, "control": 1})
    page = build_page(store, "skewed")
    assert page["srm"]["ok"] is False and page["srm"]["p_value"] < 0.001
    assert page["note"].startswith("sample ratio mismatch") and len(page["uplifts"]) == 1
    assert page["srm"]["expected"] == {"t": 0.5, "control": 0.5}
    assert page["srm"]["observed"] == {"t": 600, "control": 400}


def test_the_c2b_results_connection_picks_the_store(pg_store_schema: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from c2b.airflow.resources import get_results_store

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    monkeypatch.delenv("AIRFLOW_CONN_C2B_RESULTS", raising=False)
    default = get_results_store()
    assert isinstance(default, DuckDBResultsStore) and default.path == tmp_path / "c2b" / "results.duckdb"
    monkeypatch.setenv("AIRFLOW_CONN_C2B_RESULTS", json.dumps({
        "conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": "test",
        "extra": {"options": f"-c search_path={pg_store_schema}"}}))
    store = get_results_store()
    assert isinstance(store, DbApiResultsStore)
    store.register_run("via_conn", "r1", {"all": 1}, [], T0)
    assert store.runs("via_conn") == [("r1", T0)]
    monkeypatch.setenv("AIRFLOW_CONN_C2B_RESULTS", json.dumps({"conn_type": "duckdb"}))
    with pytest.raises(ValueError, match="needs the results file's path as its host"):
        get_results_store()


def test_a_goal_sql_whose_header_lies_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       demo_warehouse: Path) -> None:
    """The plan check reads the header; what the SQL really returns is checked when it runs."""
    sql = tmp_path / "sql"
    shutil.copytree(ROOT / "include" / "sql", sql)
    (sql / "goals" / "orders_after_touch.sql").write_text(
        "-- params: (none)\n-- columns: uid, event_time\nSELECT uid, created_at AS ordered_at FROM orders\n")
    monkeypatch.setenv("C2B_SQL_DIR", str(sql))
    store = DuckDBResultsStore(tmp_path / "results.duckdb")
    store.write_log(_log([("1000000001", "control")]))
    with pytest.raises(AttributionError, match=r"goal orders_after_touch.sql \(metric sold\) returned columns "
                                               r"uid, ordered_at; it must return event_time"):
        attribute(PLAN, "r1", store, DuckDBWarehouse(demo_warehouse), as_of=T0)
