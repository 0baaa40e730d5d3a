"""The segment library on the real PostgreSQL: same uids as DuckDB, streamed by a server-side cursor."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2b.audience.extract import extract_audience
from c2b.audience.sql import read_segment
from c2b.audience.warehouse import DbApiWarehouse, DuckDBWarehouse
from c2b.plan.load import parse_plan

from devtools.postgres import PG_DSN, connect, drop_schema, ensure_running, load_demo
from devtools.segment_examples import EXAMPLES


@pytest.fixture(scope="module")
def pg_schema(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private schema on the real PostgreSQL holding the same demo tables as the DuckDB file."""
    ensure_running()
    schema = f"c2b_test_{os.getpid()}"
    counts = load_demo(demo_warehouse, schema, tmp_path_factory.mktemp("pg_csv"))
    assert counts["users"] > 0
    yield schema
    drop_schema(schema)


@pytest.fixture
def pg_warehouse(pg_schema: str) -> DbApiWarehouse:
    return DbApiWarehouse(lambda: connect(pg_schema), name="test-postgres")


def _uids(warehouse, segment: str, params: dict, batch_rows: int = 5000) -> list:
    batches = list(warehouse.record_batches(read_segment(segment), params, batch_rows))
    assert all(b.num_rows <= batch_rows for b in batches)
    return [u for b in batches for u in b.column("uid").to_pylist()]


@pytest.mark.parametrize("segment", sorted(EXAMPLES))
def test_same_segment_same_uids_on_duckdb_and_postgres(segment: str, demo_warehouse: Path,
                                                       pg_warehouse: DbApiWarehouse) -> None:
    duck = _uids(DuckDBWarehouse(demo_warehouse), segment, EXAMPLES[segment])
    pg = _uids(pg_warehouse, segment, EXAMPLES[segment])
    assert len(duck) > 0, "the example params must select someone in the demo data"
    assert pg == duck  # same users, same order (every segment ends with ORDER BY uid)


def test_postgres_columns_and_types_follow_the_segment(demo_warehouse: Path, pg_warehouse: DbApiWarehouse) -> None:
    sql = read_segment("high_value_cancellations.sql")
    params = EXAMPLES["high_value_cancellations.sql"]
    pg = pa.Table.from_batches(list(pg_warehouse.record_batches(sql, params, 1000)))
    duck = pa.Table.from_batches(list(DuckDBWarehouse(demo_warehouse).record_batches(sql, params, 1000)))
    assert pg.schema.names == duck.schema.names
    assert pg.schema.field("uid").type == pa.int64()
    assert pg.schema.field("quoted_price").type == pa.decimal128(10, 2)
    assert pg.schema.field("cancelled_at").type == pa.timestamp("us")
    assert pg.column("quoted_price").to_pylist() == duck.column("quoted_price").to_pylist()
    assert pg.column("last_item").to_pylist() == duck.column("last_item").to_pylist()


def test_rows_come_from_a_server_side_cursor(pg_warehouse: DbApiWarehouse) -> None:
    """While the stream is open, the server shows our backend fetching from a named cursor."""
    stream = pg_warehouse.record_batches(read_segment("all_users.sql"), {}, 1000)
    first = next(stream)
    assert first.num_rows == 1000
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT query FROM pg_stat_activity WHERE query LIKE 'FETCH FORWARD 1000 FROM %'")
        assert cur.fetchall(), "expected a FETCH FORWARD from a named cursor"
    rest = sum(b.num_rows for b in stream)
    assert rest > 0


def test_extract_from_postgres_equals_extract_from_duckdb(demo_warehouse: Path, pg_warehouse: DbApiWarehouse,
                                                         tmp_path: Path) -> None:
    plan = parse_plan({
        "id": "pg_plan", "audience": {"segment": "nps_detractors.sql", "params": EXAMPLES["nps_detractors.sql"]},
        "experiment": {"salt": "s1", "variants": {"a": {"weight": 1, "touches": ["t"]},
                                                  "ctl": {"weight": 1, "control": True}}},
        "touches": [{"name": "t", "channel": "outbox", "template": "hi {{ nickname }} {{ score }}"}],
    }, "pg_plan.yaml")  # staging keeps the columns templates read (#11.10): both compared below
    from_pg = extract_audience(plan, pg_warehouse, tmp_path / "pg.parquet", batch_rows=100)
    from_duck = extract_audience(plan, DuckDBWarehouse(demo_warehouse), tmp_path / "duck.parquet", batch_rows=100)
    assert from_pg.counts == from_duck.counts
    assert from_pg.counts.kept > 100  # several batches
    pg_t, duck_t = pq.read_table(from_pg.path), pq.read_table(from_duck.path)
    for column in ("uid", "variant", "nickname", "score"):
        assert pg_t.column(column).to_pylist() == duck_t.column(column).to_pylist()


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_injection_is_just_a_value(kind: str, demo_warehouse: Path, pg_warehouse: DbApiWarehouse,
                                   pg_schema: str) -> None:
    warehouse = DuckDBWarehouse(demo_warehouse) if kind == "duckdb" else pg_warehouse
    evil = "'; DROP TABLE users; --"
    for segment, params in [("cancelled_for_reason.sql", {"reason": evil, "days": 30}),
                            ("survey_answers.sql", {"survey": "why_sell", "answer": evil, "days": 90}),
                            ("cs_complaints.sql", {"topic": evil, "days": 30})]:
        assert _uids(warehouse, segment, params) == []
    assert _uids(warehouse, "survey_answers.sql", {"survey": "why_sell", "answer": "100% 'sure'", "days": 90}) == []
    if kind == "postgres":
        with connect(pg_schema) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            assert cur.fetchone()[0] > 0
    else:
        import duckdb

        con = duckdb.connect(str(demo_warehouse), read_only=True)
        assert con.execute("SELECT count(*) FROM users").fetchone()[0] > 0
        con.close()


def test_get_warehouse_resolves_a_postgres_connection(monkeypatch: pytest.MonkeyPatch, pg_schema: str,
                                                      demo_warehouse: Path) -> None:
    """``c2b_warehouse`` with conn_type postgres goes through PostgresHook (common-sql DbApiHook)."""
    dsn = dict(kv.split("=", 1) for kv in PG_DSN.split())
    monkeypatch.setenv("AIRFLOW_CONN_C2B_WAREHOUSE", json.dumps({
        "conn_type": "postgres", "host": dsn["host"], "port": int(dsn["port"]), "login": dsn["user"],
        "schema": dsn["dbname"], "extra": {"options": f"-c search_path={pg_schema}"}}))
    from c2b.airflow import resources

    warehouse = resources.get_warehouse()
    assert isinstance(warehouse, DbApiWarehouse) and warehouse.server_side
    params = EXAMPLES["cancelled_for_reason.sql"]
    assert _uids(warehouse, "cancelled_for_reason.sql", params) == \
        _uids(DuckDBWarehouse(demo_warehouse), "cancelled_for_reason.sql", params)
