"""The real PostgreSQL the tests use (127.0.0.1:5432, trust auth), loaded with the demo warehouse.

Each test session gets its own schema (``c2b_test_<pid>``), so engineers and CI sharing the server
never see each other's tables; it is dropped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

PG_DSN = os.environ.get("C2B_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")

# DuckDB column types of the demo warehouse -> PostgreSQL.
_TYPES = {"BIGINT": "bigint", "INTEGER": "integer", "VARCHAR": "text", "BOOLEAN": "boolean",
          "TIMESTAMP": "timestamp", "DOUBLE": "double precision", "DATE": "date"}
TABLES = ("users", "orders", "order_cancellations", "order_ratings", "surveys", "cs_feedback", "nps")


def connect(schema: str | None = None):  # -> psycopg2 connection
    import psycopg2

    options = f"-c search_path={schema}" if schema else None
    return psycopg2.connect(PG_DSN, options=options) if options else psycopg2.connect(PG_DSN)


def ensure_running(timeout: float = 30.0) -> None:
    """Start the machine's PostgreSQL cluster if it does not answer (as .ci/run does); else fail."""
    import psycopg2

    def answers() -> bool:
        try:
            connect().close()
            return True
        except psycopg2.OperationalError:
            return False

    if answers():
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") and versions:
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                       check=False, capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers():
                return
            time.sleep(0.5)
    raise RuntimeError(f"PostgreSQL does not answer at {PG_DSN!r}; start it with "
                       "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")


def _pg_type(duck_type: str) -> str:
    if duck_type.startswith("DECIMAL"):
        return duck_type.replace("DECIMAL", "numeric")
    return _TYPES[duck_type]


def load_demo(duckdb_path: Path, schema: str, workdir: Path) -> dict[str, int]:
    """Copy the demo warehouse tables from DuckDB into ``schema`` (CSV through COPY); return counts."""
    import duckdb

    workdir.mkdir(parents=True, exist_ok=True)
    duck = duckdb.connect(str(duckdb_path), read_only=True)
    conn = connect()
    counts = {}
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            cur.execute(f"CREATE SCHEMA {schema}")
            for table in TABLES:
                columns = duck.execute(f"DESCRIBE {table}").fetchall()
                ddl = ", ".join(f"{name} {_pg_type(typ)}" for name, typ, *_ in columns)
                cur.execute(f"CREATE TABLE {schema}.{table} ({ddl})")
                csv_path = workdir / f"{table}.csv"
                duck.execute(f"COPY (SELECT * FROM {table}) TO '{csv_path}' (HEADER false)")
                with csv_path.open(encoding="utf-8") as f:
                    cur.copy_expert(f"COPY {schema}.{table} FROM STDIN WITH (FORMAT csv)", f)
                cur.execute(f"SELECT count(*) FROM {schema}.{table}")
                counts[table] = cur.fetchone()[0]
                csv_path.unlink()
    finally:
        conn.close()
        duck.close()
    return counts


def drop_schema(schema: str) -> None:
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        conn.close()
