"""Benchmark: what it costs that a send keeps its slot until its outcome is in the ledger.

Since #11 (defect 3) a request frees its place in the in-flight window only once the recorder has
written its outcomes to the ledger, which bounds what a crash can make a retry send again to the
window. The baseline, measured in the same run against the same gateway and Redis, is the former
behaviour: the outcome is handed to the recorder and the slot frees at once (outcomes recorded
behind the window, up to 10 ms later, or a whole Redis outage later).

One shard per measurement (``ShardDelivery.run``), one push per user, pages of 100, the gateway in
its own process (lognormal latency); the two variants alternate, ``--reps`` times each, and the
median is reported. Usage::

    .venv/bin/python bench/deliver_recording.py [--users 10000] [--concurrency 16,100] [--batch 1,100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from c2b.channels import ChannelConfig, make_channel
from c2b.delivery import modes
from c2b.delivery.senders import ChannelSender
from c2b.delivery.shard import ShardDelivery
from c2b.delivery.work import Item
from c2b.plan.load import parse_plan
from c2b.store.shards import load_shards

from devtools.gateway import GatewayProcess
from devtools.servers import RedisServer, free_port

RESULTS = Path(__file__).resolve().parent / "results"


class RecordBehind(ChannelSender):
    """The former behaviour (the baseline): hand the outcomes over and free the slot at once."""

    async def send(self, request: list[Item]) -> None:
        touch = request[0].touch
        outcomes = await self.retry.send(self.channels[touch], [it.message for it in request if it.message],
                                         self.limits[touch])
        self.recorder.add(request, outcomes)


def plan_for(concurrency: int):  # -> Plan
    return parse_plan({
        "id": "bench_rec", "audience": {"segment": "x.sql"},
        "touches": [{"name": "push", "channel": "push", "template": "Hi {{ uid }}"}],
        "delivery": {"shards": 1, "page_size": 100, "concurrency": concurrency},
    }, "<bench>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--concurrency", default="16,100")
    ap.add_argument("--batch", default="1,100")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "deliver_recording"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rec-"))
    server = RedisServer(work / "redis", port=free_port()).start()
    redis = server.client()
    staging = work / "audience.parquet"
    pq.write_table(pa.table({"uid": [str(20_000_000 + 7 * i) for i in range(args.users)]}), staging)
    runs = [0]
    load = os.getloadavg()
    rows: list[dict[str, Any]] = []
    gw = GatewayProcess(work, args.latency_ms, args.sigma)

    def once(sender: type[ChannelSender], concurrency: int, batch: int) -> float:
        runs[0] += 1
        run_id = f"r{runs[0]}"
        load_shards(redis, staging, "bench_rec", run_id, 1)
        plan = plan_for(concurrency)
        modes.ChannelSender = sender  # type: ignore[misc]  # the variant under test
        ch = make_channel("push", ChannelConfig(url=gw.url, extra={"batch_size": batch}, conn_id="bench_push"))
        gw.reset()
        started = time.perf_counter()
        ShardDelivery(redis, plan, run_id, 1, {"push": ch}, lambda: False, progress_every=3600).run(100, concurrency)
        took = time.perf_counter() - started
        ch.close()
        st = gw.stats()
        if st["accepted"] != args.users or st["duplicates"]:
            raise SystemExit(f"gateway accepted {st['accepted']} of {args.users}")
        return args.users / took

    try:
        for c in (int(x) for x in args.concurrency.split(",")):
            for b in (int(x) for x in args.batch.split(",")):
                base, new = [], []
                for _ in range(args.reps):
                    base.append(once(RecordBehind, c, b))
                    new.append(once(ChannelSender, c, b))
                row = {"concurrency": c, "batch": b, "record_behind": [round(x, 1) for x in base],
                       "record_then_free": [round(x, 1) for x in new],
                       "ratio": round(statistics.median(new) / statistics.median(base), 3)}
                print(row, flush=True)
                rows.append(row)
    finally:
        modes.ChannelSender = ChannelSender  # type: ignore[misc]
        gw.stop()
        server.stop()
    meta = {"users": args.users, "latency_median_ms": args.latency_ms, "sigma": args.sigma, "reps": args.reps,
            "python": platform.python_version(), "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Recording before the slot frees (`bench/deliver_recording.py`)", "",
             f"{args.users:,} users in one shard, one push each, pages of 100; gateway in its own process, "
             f"lognormal latency median {args.latency_ms:g} ms sigma {args.sigma}; private redis-server; "
             f"{args.reps} alternating runs per variant, medians. Python {meta['python']}, {meta['cpus']} CPUs "
             f"shared (load average before {load[0]:.2f}, after {meta['load_after'][0]:.2f}).", "",
             "Baseline: outcomes recorded behind the window (before #11 defect 3). Ours: a request keeps its "
             "slot until its outcomes are in the ledger (repeats after a crash bounded by the window).", "",
             "| in flight | batch | baseline msgs/s (runs) | ours msgs/s (runs) | ours / baseline |",
             "| ---: | ---: | --- | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['batch']} | {', '.join(f'{x:,.0f}' for x in r['record_behind'])} "
                     f"| {', '.join(f'{x:,.0f}' for x in r['record_then_free'])} | **{r['ratio']}** |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
