"""Benchmark: the send-time suppression check per page, against the page reads it adds to.

Every page of a shard is now checked against the plan's suppression lists and the global opt-out
list before sending (``c2b.store.suppression.suppressed``). Measured in one run on one private
redis-server, for pages of ``--page`` uids of a loaded shard:

(a) baseline: the page reads the delivery already did before this change (``read_page`` +
    ``read_attrs``);
(b) the check when no list was ever used (one EXISTS round trip on the lists' markers);
(c) the check against a list of ``--list-size`` uids (sharded into 1,024 buckets), one list;
(d) the same with two such lists (a plan's own list and the global opt-outs).

Reported: microseconds per page (median of ``--pages`` pages) and the ratio to (a). Usage::

    .venv/bin/python bench/suppression_check.py [--list-size 1000000] [--page 100] [--pages 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from c2b.store import suppression
from c2b.store.shards import ShardKeys, load_shards, read_attrs, read_layout, read_page

from devtools.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _median_us(fn, pages: list[int], page: int) -> float:
    times = []
    for start in pages:
        t0 = time.perf_counter()
        fn(start, page)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list-size", type=int, default=1_000_000)
    ap.add_argument("--audience", type=int, default=50_000)
    ap.add_argument("--page", type=int, default=100)
    ap.add_argument("--pages", type=int, default=300)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            r = server.client()
            uids = [str(10**9 + i) for i in range(args.audience)]
            path = Path(tmp) / "aud.parquet"
            pq.write_table(pa.table({"uid": uids, "nickname": [f"n{i}" for i in range(args.audience)]}), path)
            load_shards(r, path, "bench", "r1", 1, ["nickname"])
            keys = ShardKeys("bench", "r1", 1)
            starts = [i * args.page for i in range(min(args.pages, args.audience // args.page))]

            layout = read_layout(r, "bench", "r1")

            def baseline(start: int, n: int) -> None:
                read_page(r, keys, start, n)
                read_attrs(r, keys, start, n, layout)

            def check(names: list[str]):
                def run(start: int, n: int) -> None:
                    suppression.suppressed(r, names, read_page(r, keys, start, n))
                return run

            # the check's own cost = (read_page + check) - read_page
            def page_only(start: int, n: int) -> None:
                read_page(r, keys, start, n)

            listed = [str(2 * 10**9 + i) for i in range(args.list_size)]
            listed[: args.audience // 100] = uids[:: 100][: args.audience // 100]  # 1% of the audience
            for name in ("plan_list", "opt_outs"):
                suppression.add(r, name, listed)
            a = _median_us(baseline, starts, args.page)
            p = _median_us(page_only, starts, args.page)
            b = _median_us(check(["never_used"]), starts, args.page) - p
            c = _median_us(check(["opt_outs"]), starts, args.page) - p
            d = _median_us(check(["plan_list", "opt_outs"]), starts, args.page) - p
            largest = max(r.scard(suppression.bucket_key("opt_outs", b)) for b in range(1, suppression.BUCKETS + 1))
        finally:
            server.stop()
    row = {"list_size": args.list_size, "page": args.page, "pages": len(starts),
           "baseline_us": round(a, 1), "unused_list_us": round(b, 1), "one_list_us": round(c, 1),
           "two_lists_us": round(d, 1), "largest_bucket": largest,
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "suppression_check.json").write_text(json.dumps(row, indent=2))
    md = [
        "# Send-time suppression check (`bench/suppression_check.py`)", "",
        f"Pages of {args.page} uids, median of {len(starts)} pages; lists of {args.list_size:,} uids in "
        f"{suppression.BUCKETS} buckets (largest bucket {largest:,} members); one private redis-server; "
        f"Python {row['python']}, {row['cpus']} CPUs shared (load {row['load_before']} before, "
        f"{row['load_after']} after).", "",
        "| per page | microseconds | vs (a) |", "| --- | ---: | ---: |",
        f"| (a) page reads before this change (read_page + read_attrs) | {a:,.1f} | 1.00 |",
        f"| (b) check, no list ever used | {b:,.1f} | {b / a:.2f} |",
        f"| (c) check, one list | {c:,.1f} | {c / a:.2f} |",
        f"| (d) check, two lists | {d:,.1f} | {d / a:.2f} |",
    ]
    (RESULTS / "suppression_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
