"""Benchmark: writing the delivery log, against a plain bulk insert of the same rows in the same run.

For each store (a DuckDB file; the real PostgreSQL at 127.0.0.1:5432, database ``test``, a private
schema) and ``--rows`` rows of one run (touch rows and holdout rows, as a deliver task writes them):

(a) baseline: the same rows appended to a table of the same shape without a key, in the same
    chunks, by the same bulk path (DuckDB: Arrow scan; PostgreSQL: COPY + INSERT ... SELECT);
(b) ``ResultsStore.write_log``: the bulk upsert keyed on (plan, run, touch, uid), chunks of
    ``BULK_ROWS``;
(c) the same call again (a retried deliver task): every row conflicts and is kept;
(d) the former path, for comparison in the same run: upserts of 1,000 rows (DuckDB: an Arrow
    table each; PostgreSQL: multi-row VALUES of 8,000 parameters).

Every step runs ``--repeat`` times on a fresh table; the median is reported with every value, and
the ratios (b)/(a), (c)/(a). Usage::

    .venv/bin/python bench/results_log.py [--rows 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from c2b.results.store import BATCH_ROWS, BULK_ROWS, DDL, DbApiResultsStore, DuckDBResultsStore, ResultsStore

from devtools.postgres import connect, drop_schema, ensure_running

OUT = Path(__file__).parent / "results" / "results_log"
T0 = datetime(2026, 11, 27, 10, 0)


def rows(n: int) -> list[tuple]:
    return [("bench_plan", "run_1", "control" if i % 5 == 0 else "coupon", "-" if i % 5 == 0 else "coupon_push",
             str(1_000_000_000 + i), "holdout" if i % 5 == 0 else "sent", None, T0) for i in range(n)]


def _baseline(store: ResultsStore, data: list[tuple]) -> float:
    """Append the rows to a keyless copy of the log table through the store's own batch insert."""
    plain = DDL[0].replace("c2b_delivery_log", "c2b_bench_plain").replace(",\n        PRIMARY KEY (plan_id, run_id, "
                                                                            "touch, uid))", ")")

    def work(cur: object) -> None:
        store._execute(cur, "DROP TABLE IF EXISTS c2b_bench_plain")
        store._execute(cur, plain)

    store._transaction(work)
    import c2b.results.store as module

    upsert = module._UPSERT_LOG
    module._UPSERT_LOG = ("INSERT INTO c2b_bench_plain (plan_id, run_id, variant, touch, uid, outcome, reason, "
                          "touched_at) {values}")
    try:
        started = time.perf_counter()
        store._transaction(lambda cur: [store._insert_log_batch(cur, data[i:i + BULK_ROWS])
                                        for i in range(0, len(data), BULK_ROWS)])
        return time.perf_counter() - started
    finally:
        module._UPSERT_LOG = upsert


def _timed(store: ResultsStore, data: list[tuple]) -> float:
    started = time.perf_counter()
    assert store.write_log(data) == len(data)
    return time.perf_counter() - started


def _former(store: ResultsStore, data: list[tuple]) -> float:
    """The write path before the bulk one: an upsert per 1,000 rows (DuckDB: Arrow; else VALUES)."""
    one = store._insert_log_batch if isinstance(store, DuckDBResultsStore) else \
        (lambda cur, batch: ResultsStore._insert_log_batch(store, cur, batch))
    started = time.perf_counter()
    store._transaction(lambda cur: [one(cur, data[i:i + BATCH_ROWS]) for i in range(0, len(data), BATCH_ROWS)])
    return time.perf_counter() - started


def measure(store: ResultsStore, reset: object, n: int, repeat: int) -> dict[str, object]:
    data = rows(n)
    out: dict[str, list[float]] = {"baseline_insert": [], "write_log": [], "write_log_again": [],
                                   "former_write_log": [], "former_write_log_again": []}
    for _ in range(repeat):
        reset()  # type: ignore[operator]
        out["baseline_insert"].append(_baseline(store, data))
        out["write_log"].append(_timed(store, data))
        out["write_log_again"].append(_timed(store, data))
        assert store.log_count("bench_plan", "run_1") == n
        reset()  # type: ignore[operator]
        out["former_write_log"].append(_former(store, data))
        out["former_write_log_again"].append(_former(store, data))
        assert store.log_count("bench_plan", "run_1") == n
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"seconds": {k: [round(x, 3) for x in v] for k, v in out.items()},
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "rows_per_second": {k: round(n / v) for k, v in med.items()},
            "ratio_to_baseline": {k: round(v / med["baseline_insert"], 2) for k, v in med.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    summary: dict[str, object] = {"rows": args.rows, "bulk_rows": BULK_ROWS, "batch_rows": BATCH_ROWS,
                                  "repeat": args.repeat,
                                  "machine": machine}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "results.duckdb"
        duck = DuckDBResultsStore(path)
        summary["duckdb"] = measure(duck, lambda: path.unlink(missing_ok=True), args.rows, args.repeat)
    ensure_running()
    schema = f"c2b_bench_{os.getpid()}"

    def reset_pg() -> None:
        drop_schema(schema)
        conn = connect()
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {schema}")
        conn.close()

    try:
        summary["postgres"] = measure(DbApiResultsStore(lambda: connect(schema), name="bench"), reset_pg,
                                      args.rows, args.repeat)
    finally:
        drop_schema(schema)
    OUT.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
