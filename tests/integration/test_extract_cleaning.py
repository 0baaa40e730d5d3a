"""Bad rows are counted exactly and never crash the run; limits, samples and empty audiences."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from c2b.audience.extract import extract_audience
from c2b.audience.sql import SegmentError
from c2b.audience.warehouse import DbApiWarehouse, DuckDBWarehouse
from c2b.hashing import VariantPicker
from c2b.plan.load import parse_plan
from c2b.plan.model import Plan


def make_plan(segment: str, params: dict | None = None, **audience) -> Plan:
    return parse_plan({
        "id": "cleaning",
        "audience": {"segment": segment, "params": params or {}, **audience},
        "experiment": {"salt": "salt-x", "variants": {"a": {"weight": 3, "touches": ["t"]},
                                                      "b": {"weight": 1, "control": True}}},
        # Staging keeps only the columns templates read (issue #11.10): these tests follow three.
        "touches": [{"name": "t", "channel": "outbox", "template": "hi {{ note }}{{ nickname }}{{ cancel_reason }}"}],
    }, "cleaning.yaml")


@pytest.fixture
def sql_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private segment folder, so a test can write its own (bad) segments."""
    folder = tmp_path / "sql"
    (folder / "segments").mkdir(parents=True)
    monkeypatch.setenv("C2B_SQL_DIR", str(folder))
    return folder / "segments"


BAD_DUCKDB = """-- A deliberately bad segment.
-- params: (none)
-- columns: uid, note
SELECT * FROM (VALUES
    ('1001', 'first'), ('1002', 'ok'), (NULL, 'null uid'), ('1001', 'duplicate of 1001'),
    (' 1003', 'leading space'), ('', 'empty'), ('abc', 'text uid'), ('abc', 'duplicate text'),
    ('x' || chr(9) || 'y', 'tab'), (repeat('9', 129), 'too long'), ('用户7', 'unicode ok'),
    (NULL, 'another null'), ('1002', 'duplicate of 1002')
) AS t(uid, note)
"""


def test_bad_rows_from_duckdb_are_counted_exactly(sql_dir: Path, demo_warehouse: Path, tmp_path: Path) -> None:
    (sql_dir / "bad.sql").write_text(BAD_DUCKDB)
    result = extract_audience(make_plan("bad.sql"), DuckDBWarehouse(demo_warehouse), tmp_path / "out.parquet",
                              batch_rows=4)
    c = result.counts
    assert (c.rows, c.null_uid, c.malformed_uid, c.duplicate_uid, c.kept) == (13, 2, 4, 3, 4)
    assert c.balanced()
    table = pq.read_table(result.path)
    assert table.column("uid").to_pylist() == ["1001", "1002", "abc", "用户7"]
    assert table.column("note").to_pylist() == ["first", "ok", "text uid", "unicode ok"]


def test_bad_rows_from_a_dbapi_driver_incl_lone_surrogates(tmp_path: Path, sql_dir: Path) -> None:
    """sqlite3 is a real DB-API driver whose text can come back holding lone surrogates.

    mmh3 given such a ``str`` kills the process (SIGSEGV); this test passing in-process is the proof
    that the extract never hands one over.
    """
    db = tmp_path / "bad.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (uid, nickname)")
    rows = [(1001, "int"), ("1001", "text duplicate of an int"), (None, "null"), (12.0, "integral float"),
            (12.5, "fractional float"), (b"a\xed\xa0\x80z", "lone surrogate uid"), ("abc", "text"),
            ("abc", "duplicate"), ("ok_2", b"nick \xed\xa0\x80 with a lone surrogate"), (float("nan"), "nan"),
            ("", "empty")]
    for uid, nick in rows:
        con.execute("INSERT INTO users VALUES (CAST(? AS TEXT), CAST(? AS TEXT))" if isinstance(uid, bytes)
                    else "INSERT INTO users VALUES (?, CAST(? AS TEXT))", (uid, nick))
    con.commit()
    con.close()
    (sql_dir / "sqlite_users.sql").write_text("-- params: (none)\n-- columns: uid, nickname\n"
                                              "SELECT uid, nickname FROM users WHERE :x = :x")

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db)
        conn.text_factory = lambda b: b.decode("utf-8", "surrogatepass")  # lone surrogates reach Python
        return conn

    assert "\ud800" in connect().execute("SELECT uid FROM users WHERE nickname = 'lone surrogate uid'").fetchone()[0]
    warehouse = DbApiWarehouse(connect, server_side=False, name="sqlite")
    result = extract_audience(make_plan("sqlite_users.sql", {"x": 1}), warehouse, tmp_path / "out.parquet",
                              batch_rows=3)
    c = result.counts
    # null: None, NaN (sqlite stores NaN as NULL); malformed: 12.5, lone surrogate, "";
    # duplicates: "1001" (of 1001), "abc"; kept: 1001, 12, abc, ok_2.
    assert (c.rows, c.null_uid, c.malformed_uid, c.duplicate_uid, c.kept) == (11, 2, 3, 2, 4), c
    table = pq.read_table(result.path)
    assert table.column("uid").to_pylist() == ["1001", "12", "abc", "ok_2"]
    assert table.column("nickname").to_pylist()[-1] == "nick \ufffd\ufffd\ufffd with a lone surrogate"
    picker = VariantPicker("salt-x", {"a": 3, "b": 1})
    assert table.column("variant").to_pylist() == [picker.pick(u.encode()) for u in table.column("uid").to_pylist()]


def test_limit_and_sample_keep_the_first_users_and_count_the_rest(demo_warehouse: Path, tmp_path: Path) -> None:
    all_uids = [str(r[0]) for r in duckdb.connect(str(demo_warehouse), read_only=True).execute(
        "SELECT uid FROM users WHERE NOT opted_out ORDER BY uid").fetchall()]
    warehouse = DuckDBWarehouse(demo_warehouse)
    limited = extract_audience(make_plan("all_users.sql", limit=1234), warehouse, tmp_path / "a.parquet",
                               batch_rows=1000)
    assert (limited.counts.kept, limited.counts.over_limit) == (1234, len(all_uids) - 1234)
    assert pq.read_table(limited.path).column("uid").to_pylist() == all_uids[:1234]
    sampled = extract_audience(make_plan("all_users.sql", limit=1234), warehouse, tmp_path / "b.parquet",
                               sample=10)
    assert (sampled.counts.kept, sampled.counts.over_limit) == (10, len(all_uids) - 10)
    assert sum(sampled.counts.per_variant.values()) == 10


def test_empty_audience_writes_a_valid_empty_file(demo_warehouse: Path, tmp_path: Path) -> None:
    plan = make_plan("cancelled_for_reason.sql", {"reason": "no_such_reason", "days": 30})
    result = extract_audience(plan, DuckDBWarehouse(demo_warehouse), tmp_path / "empty.parquet")
    assert result.counts.rows == result.counts.kept == 0
    assert result.counts.per_variant == {"a": 0, "b": 0}
    table = pq.read_table(result.path)
    assert table.num_rows == 0
    assert table.schema.names[:2] == ["uid", "variant"] and "cancel_reason" in table.schema.names
    assert "0 users" in result.counts.describe()


def test_a_segment_without_uid_fails_clearly_and_leaves_no_file(sql_dir: Path, demo_warehouse: Path,
                                                                tmp_path: Path) -> None:
    (sql_dir / "no_uid.sql").write_text("SELECT 1 AS user_id")
    out = tmp_path / "x.parquet"
    with pytest.raises(ValueError, match="returns no 'uid' column .*user_id"):
        extract_audience(make_plan("no_uid.sql"), DuckDBWarehouse(demo_warehouse), out)
    assert not list(tmp_path.glob("x.parquet*"))


def test_wrong_params_fail_before_the_query(demo_warehouse: Path, tmp_path: Path) -> None:
    with pytest.raises(SegmentError, match=r"missing param\(s\) days.*unknown param\(s\) reasn"):
        extract_audience(make_plan("cancelled_for_reason.sql", {"reason": "x", "reasn": "y"}),
                         DuckDBWarehouse(demo_warehouse), tmp_path / "x.parquet")
