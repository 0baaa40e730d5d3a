"""The demo warehouse: deterministic from its seed, shaped as documented, and the demo segment finds users."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from devtools.demo_warehouse import CANCEL_REASONS, SCHEMA, build_demo_warehouse

ROOT = Path(__file__).resolve().parents[2]
SEGMENT = ROOT / "include" / "sql" / "segments" / "cancelled_for_reason.sql"
USERS = 5_000
AS_OF = datetime.now(UTC).date()  # the segment counts back from current_date
COLUMNS = {
    "users": ["uid", "nickname", "city", "acquisition_channel", "timezone", "signup_at", "last_active_at",
              "opted_out", "phone"],
    "orders": ["order_id", "uid", "item", "category", "quoted_price", "status", "created_at"],
    "order_cancellations": ["order_id", "uid", "reason", "cancelled_at"],
    "order_ratings": ["order_id", "uid", "rating", "comment", "rated_at"],
    "surveys": ["uid", "survey", "question", "answer", "answered_at"],
    "cs_feedback": ["uid", "source", "topic", "sentiment", "created_at"],
    "nps": ["uid", "score", "answered_at"],
    "warehouse_info": ["key", "value"],
}


def _fingerprint(path: Path) -> dict[str, tuple[int, int]]:
    """Per table: row count and an order-independent hash of every row's full contents."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*), coalesce(sum(hash(x)), 0) FROM {t} AS x").fetchone()  # type: ignore[misc]
                for t in COLUMNS}
    finally:
        con.close()


def _query(path: Path, sql: str, params: dict | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or {}).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demo") / "warehouse.duckdb"
    build_demo_warehouse(path, users=USERS, seed=42, as_of=AS_OF)
    return path


def test_same_seed_and_date_give_identical_tables(warehouse: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.duckdb"
    counts = build_demo_warehouse(again, users=USERS, seed=42, as_of=AS_OF)
    assert _fingerprint(again) == _fingerprint(warehouse)
    assert counts == {t: n for t, (n, _) in _fingerprint(again).items()}


def test_another_seed_gives_other_data(warehouse: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.duckdb"
    build_demo_warehouse(other, users=USERS, seed=7, as_of=AS_OF)
    assert _fingerprint(other)["users"] != _fingerprint(warehouse)["users"]


def test_rebuild_replaces_the_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    build_demo_warehouse(path, users=300, seed=1, as_of=AS_OF)
    build_demo_warehouse(path, users=200, seed=1, as_of=AS_OF)
    assert _query(path, "SELECT count(*) FROM users") == [(200,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.duckdb"]


def test_documented_tables_and_columns(warehouse: Path) -> None:
    tables = {t for (t,) in _query(warehouse, "SELECT table_name FROM information_schema.tables")}
    assert set(COLUMNS) <= tables
    assert set(SCHEMA) == set(COLUMNS)
    for table, columns in COLUMNS.items():
        got = [c for (c,) in _query(warehouse, "SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = $t ORDER BY ordinal_position", {"t": table})]
        assert got == columns, table
    assert _query(warehouse, "SELECT data_type FROM information_schema.columns "
                             "WHERE table_name = 'orders' AND column_name = 'quoted_price'") == [("DECIMAL(10,2)",)]
    info = dict(_query(warehouse, "SELECT key, value FROM warehouse_info"))
    assert (info["seed"], info["users"], info["as_of"]) == ("42", str(USERS), AS_OF.isoformat())


def test_uids_are_unique_ten_digit_and_not_sequential(warehouse: Path) -> None:
    [(n, distinct, lo, hi)] = _query(warehouse, "SELECT count(*), count(DISTINCT uid), min(uid), max(uid) FROM users")
    assert n == distinct == USERS
    assert 10**9 <= lo and hi < 10**10
    assert hi - lo > 100 * USERS


def test_uids_stay_unique_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "chunked.duckdb"
    counts = build_demo_warehouse(path, users=2_500, seed=3, as_of=AS_OF, chunk_users=1_000)
    assert _query(path, "SELECT count(*), count(DISTINCT uid) FROM users") == [(2_500, 2_500)]
    assert _query(path, "SELECT count(DISTINCT order_id) FROM orders") == [(counts["orders"],)]
    assert _query(path, "SELECT count(*) FROM orders o ANTI JOIN users u USING (uid)") == [(0,)]


def test_every_cancelled_order_has_exactly_one_cancellation(warehouse: Path) -> None:
    reasons = {r for (r,) in _query(warehouse, "SELECT DISTINCT reason FROM order_cancellations")}
    assert reasons == set(CANCEL_REASONS)
    assert _query(warehouse, """
        SELECT count(*) FROM orders o LEFT JOIN order_cancellations c USING (order_id)
        WHERE o.status = 'cancelled' GROUP BY o.order_id HAVING count(c.order_id) <> 1
    """) == []
    assert _query(warehouse, """
        SELECT count(*) FROM order_cancellations c JOIN orders o USING (order_id)
        WHERE o.status <> 'cancelled' OR o.uid <> c.uid OR c.cancelled_at < o.created_at
    """) == [(0,)]
    assert _query(warehouse, "SELECT count(*) FROM order_cancellations ANTI JOIN orders USING (order_id)") == [(0,)]


def test_value_domains_and_dates(warehouse: Path) -> None:
    start = AS_OF - timedelta(days=180)
    assert _query(warehouse, "SELECT DISTINCT status FROM orders ORDER BY 1") == [
        ("cancelled",), ("completed",), ("in_progress",)]
    assert _query(warehouse, "SELECT min(rating) >= 1, max(rating) <= 5 FROM order_ratings") == [(True, True)]
    assert _query(warehouse, "SELECT min(score) >= 0, max(score) <= 10 FROM nps") == [(True, True)]
    [(lo, hi)] = _query(warehouse, "SELECT min(created_at), max(created_at) FROM orders")
    assert start <= lo.date() and hi.date() < AS_OF
    assert _query(warehouse, "SELECT count(*) FROM users WHERE last_active_at < signup_at") == [(0,)]


def test_segment_returns_distinct_recent_users(warehouse: Path) -> None:
    sql = re.sub(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)", r"$\1", SEGMENT.read_text())
    rows = _query(warehouse, sql, {"reason": "price_too_low", "days": 30})
    assert rows
    uids = [r[0] for r in rows]
    assert len(uids) == len(set(uids))
    [(today,)] = _query(warehouse, "SELECT current_date")
    assert all(r[6] == "price_too_low" and r[7].date() >= today - timedelta(days=30) for r in rows)
    opted_out = {u for (u,) in _query(warehouse, "SELECT uid FROM users WHERE opted_out")}
    assert not opted_out & set(uids)


def test_as_of_moves_the_dates(tmp_path: Path) -> None:
    path = tmp_path / "past.duckdb"
    build_demo_warehouse(path, users=500, seed=42, as_of=date(2024, 3, 1))
    [(hi,)] = _query(path, "SELECT max(created_at) FROM orders")
    assert hi.date() < date(2024, 3, 1)
