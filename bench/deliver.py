"""Benchmark: delivery throughput, the seed's page barrier against our sliding window.

Measured in one run, against the same real HTTP gateway (``devtools/gateway.py`` in its own process,
lognormal latency, median 20 ms) and the same private redis-server, on the same audience (50k
users in 16 shards, one push per user), with the same number of sends in flight (``concurrency``):

(a) seed style: one job walks the shards one after another; per page of 100 uids it checks the
    kill flag, submits every send to a thread pool of ``concurrency`` threads and waits for the
    whole page (a count-down latch) before reading the next. No ledger (the seed had none). The
    same channel class (HTTP client) and template rendering as ours, so only the loop differs;
(b) ours, single sends: ``ShardDelivery`` on each shard in turn, a sliding window of
    ``concurrency`` requests, with everything the seed lacks (ledger, checkpoint, contacts,
    frequency-cap counts, kill switch per page);
(c) ours, batch sends: as (b) with ``batch_size`` messages per request;
(d) ours with a configured rate limit (single sends, and batches), shards in parallel processes
    as deployed, sharing the limit through Redis: the achieved rate at the gateway;
(e) ours as deployed: shards in ``--parallel`` processes at once (one mapped task per shard), each
    with its own window of ``concurrency``: more sends in flight than (a), so reported apart.

msgs/s = messages accepted by the gateway / wall time of the whole delivery; "at the gateway" is
the rate between its first and last acceptance. Usage::

    .venv/bin/python bench/deliver.py [--users 50000] [--concurrency 16,100] [--sigma 0.5,1.0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from c2b.channels import ChannelConfig, Message, make_channel
from c2b.delivery.shard import ShardDelivery
from c2b.delivery.work import idempotency_key
from c2b.plan.load import parse_plan
from c2b.plan.templates import compile_template
from c2b.store.shards import ShardKeys, load_shards, read_page

from devtools.gateway import GatewayProcess
from devtools.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results"
SHARDS = 16
PAGE = 100
TEMPLATE = "Hi {{ uid }}, sell this week and get +{{ offer.amount | int }} {{ offer.currency }} on top"


def plan_for(concurrency: int, rate_limit: float | None = None):  # -> Plan
    return parse_plan({
        "id": "bench_deliver", "audience": {"segment": "x.sql"},
        "touches": [{"name": "push", "channel": "push", "template": TEMPLATE, "assets": {"link": "https://e.x/s"},
                     "offer": {"type": "price_up_coupon", "amount": 30}}],
        "delivery": {"shards": SHARDS, "page_size": PAGE, "concurrency": concurrency, "rate_limit": rate_limit},
    }, "<bench>")


def seed_style(redis: Any, plan: Any, run_id: str, url: str, concurrency: int) -> None:
    """The seed's loop: shards in turn, pages of 100, a thread pool, wait for the whole page."""
    channel = make_channel("push", ChannelConfig(url=url))
    touch = plan.touches[0]
    template = compile_template(touch.template)
    offer = touch.offer.model_dump(exclude_none=True)

    def send(uid: str) -> None:
        try:
            text = template.render({"uid": uid, "offer": offer})
            outcome = channel.send(Message(idempotency_key(plan.id, run_id, touch.name, uid), plan.id, run_id,
                                           touch.name, "push", uid, "all", text, dict(touch.assets), offer))
            if outcome.status != "sent":
                print(f"send failed: {outcome}", file=sys.stderr)
        except Exception as exc:  # the seed caught and logged errors
            print(f"send failed: {exc}", file=sys.stderr)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for shard in range(1, SHARDS + 1):
            keys = ShardKeys(plan.id, run_id, shard)
            cursor = 0
            while True:
                if redis.exists("c2b:kill"):  # the seed's per-page switch check
                    return
                uids = read_page(redis, keys, cursor, PAGE)
                if not uids:
                    break
                wait([pool.submit(send, u) for u in uids])  # the count-down latch
                cursor += len(uids)
    channel.close()


def ours(redis: Any, plan: Any, run_id: str, url: str, batch: int, shards: list[int]) -> None:
    for shard in shards:
        ch = make_channel("push", ChannelConfig(url=url, extra={"batch_size": batch}, conn_id="bench_push"))
        ShardDelivery(redis, plan, run_id, shard, {"push": ch}, lambda: False, progress_every=3600).run(
            plan.delivery.page_size, plan.delivery.concurrency)
        ch.close()


def _ours_child(args: tuple) -> None:
    import redis as redis_py

    url_redis, concurrency, limit, run_id, url, batch, shard = args
    ours(redis_py.Redis.from_url(url_redis), plan_for(concurrency, limit), run_id, url, batch, [shard])


def ours_parallel(redis_url: str, concurrency: int, limit: float | None, run_id: str, url: str, batch: int,
                  processes: int) -> None:
    """Shards as Airflow runs them: each in a worker process, ``processes`` at once."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pool.map(_ours_child, [(redis_url, concurrency, limit, run_id, url, batch, s) for s in range(1, SHARDS + 1)],
                 chunksize=1)


def measure(name: str, gw: GatewayProcess, expect: int, fn) -> dict[str, Any]:
    gw.reset()
    started = time.perf_counter()
    fn()
    took = time.perf_counter() - started
    st = gw.stats()
    if st["accepted"] != expect or st["duplicates"]:
        raise SystemExit(f"{name}: gateway accepted {st['accepted']} of {expect} ({st['duplicates']} duplicates)")
    rate = st["accepted"] / took
    # What the gateway saw, first to last acceptance (leaves out process start-up and the drain).
    span = (st["last_accept"] or 0) - (st["first_accept"] or 0)
    at_gw = (st["accepted"] - 1) / span if span > 0 else 0.0
    print(f"  {name:<44} {st['accepted']:>7,} msgs {took:7.2f} s {rate:9.1f} msgs/s  (at the gateway {at_gw:9.1f}/s,"
          f" {st['requests']:,} requests)", flush=True)
    return {"name": name, "messages": st["accepted"], "seconds": round(took, 3), "msgs_per_s": round(rate, 1),
            "at_gateway_msgs_per_s": round(at_gw, 1), "requests": st["requests"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--sigma", default="0.5,1.0", help="lognormal sigmas to run (comma separated)")
    ap.add_argument("--concurrency", default="16,100", help="sends in flight (comma separated)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=4, help="shard processes at once for (e)")
    ap.add_argument("--single-limit", type=float, default=1000.0, help="rate limit for (d) single sends, msgs/s")
    ap.add_argument("--limit-users", type=int, default=10_000, help="users for (d) single sends")
    ap.add_argument("--batch-limit", type=float, default=5000.0, help="rate limit for (d) batches, msgs/s")
    ap.add_argument("--out", default=str(RESULTS / "deliver"))
    ap.add_argument("--from-json", action="store_true", help="only rewrite the .md from the .json of the last run")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.out).with_suffix(".json").read_text())
        write_results(Path(args.out), saved["meta"], saved["rows"], argparse.Namespace(**saved["args"]))
        return
    sigmas = [float(s) for s in args.sigma.split(",")]
    concs = [int(c) for c in args.concurrency.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-deliver-"))
    server = RedisServer(work / "redis", port=free_port()).start()
    redis = server.client()
    uids = [str(10_000_000 + 7 * i) for i in range(args.users)]
    staging = work / "audience.parquet"
    pq.write_table(pa.table({"uid": uids}), staging)
    runs = [0]

    def fresh_run(n_users: int | None = None) -> str:
        """A new run id with the audience loaded (fresh ledgers for every measurement)."""
        runs[0] += 1
        run_id = f"r{runs[0]}"
        path = staging
        if n_users:
            path = work / f"audience-{n_users}.parquet"
            pq.write_table(pa.table({"uid": uids[:n_users]}), path)
        load_shards(redis, path, "bench_deliver", run_id, SHARDS)
        return run_id

    every = list(range(1, SHARDS + 1))

    def measure_row(gw: GatewayProcess, sigma: float, c: int, with_extras: bool) -> dict[str, Any]:
        """(a), (b), (c) for one latency and concurrency; (d) and (e) too for the first one."""
        url = gw.url
        plan = plan_for(c)
        row: dict[str, Any] = {"sigma": sigma, "concurrency": c}
        row["seed"] = measure("(a) seed style, page barrier", gw, args.users,
                              partial(seed_style, redis, plan, fresh_run(), url, c))
        row["single"] = measure("(b) ours, single sends", gw, args.users,
                                partial(ours, redis, plan, fresh_run(), url, 1, every))
        row["batch"] = measure(f"(c) ours, batches of {args.batch}", gw, args.users,
                               partial(ours, redis, plan, fresh_run(), url, args.batch, every))
        row["single_x"] = round(row["single"]["msgs_per_s"] / row["seed"]["msgs_per_s"], 2)
        row["batch_x"] = round(row["batch"]["msgs_per_s"] / row["seed"]["msgs_per_s"], 2)
        print(f"  ratios vs (a): single x{row['single_x']}, batch x{row['batch_x']}", flush=True)
        if not with_extras:
            return row
        row["parallel"] = measure(f"(e) ours, single, {args.parallel} shard processes", gw, args.users,
                                  partial(ours_parallel, server.url, c, None, fresh_run(), url, 1, args.parallel))
        row["parallel_x"] = round(row["parallel"]["msgs_per_s"] / row["seed"]["msgs_per_s"], 2)
        row["limit_single"] = measure(f"(d) ours, single, limit {args.single_limit:g}/s", gw, args.limit_users,
                                      partial(ours_parallel, server.url, c, args.single_limit,
                                              fresh_run(args.limit_users), url, 1, args.parallel))
        row["limit_batch"] = measure(f"(d) ours, batches, limit {args.batch_limit:g}/s", gw, args.users,
                                     partial(ours_parallel, server.url, c, args.batch_limit, fresh_run(), url,
                                             args.batch, args.parallel))
        row["limit_single_pct"] = round(100 * row["limit_single"]["at_gateway_msgs_per_s"] / args.single_limit, 1)
        row["limit_batch_pct"] = round(100 * row["limit_batch"]["at_gateway_msgs_per_s"] / args.batch_limit, 1)
        print(f"  (d) {row['limit_single_pct']}% / {row['limit_batch_pct']}% of the limit; "
              f"(e) x{row['parallel_x']} vs (a)", flush=True)
        return row

    load = os.getloadavg()
    results: list[dict[str, Any]] = []
    print(f"bench/deliver.py: {args.users:,} users, {SHARDS} shards, pages of {PAGE}, latency median "
          f"{args.latency_ms:g} ms; load average {load[0]:.2f}", flush=True)
    try:
        for sigma in sigmas:
            gw = GatewayProcess(work, args.latency_ms, sigma)
            try:
                for c in concs:
                    print(f"sigma {sigma}, concurrency {c}:", flush=True)
                    results.append(measure_row(gw, sigma, c, sigma == sigmas[0] and c == concs[0]))
            finally:
                gw.stop()
    finally:
        server.stop()
    meta = {"users": args.users, "latency_median_ms": args.latency_ms, "shards": SHARDS, "page": PAGE,
            "batch": args.batch, "parallel": args.parallel, "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
            "load_after": [round(x, 2) for x in os.getloadavg()]}
    (RESULTS if args.out == str(RESULTS / "deliver") else Path(args.out).parent).mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": results, "args": vars(args)},
                                                              indent=2))
    write_results(Path(args.out), meta, results, args)


def ceilings(sigma: float, concurrency: int, median_s: float, pages: int = 2000, seed: int = 1) -> tuple[float, float]:
    """Return the msgs/s of (a) and (b) if sending cost no CPU: latency alone decides.

    (a): a page of 100 sends on ``concurrency`` workers (each takes the next send when free) lasts
    until its slowest worker is done; (b): ``concurrency`` sends always in flight, so
    concurrency / mean latency. Monte Carlo for (a) with the gateway's lognormal.
    """
    import heapq
    import math
    import random

    rng = random.Random(seed)
    total = 0.0
    for _ in range(pages):
        workers = [0.0] * concurrency
        for _ in range(PAGE):
            heapq.heappush(workers, heapq.heappop(workers) + median_s * rng.lognormvariate(0, sigma))
        total += max(workers)
    return PAGE * pages / total, concurrency / (median_s * math.exp(sigma * sigma / 2))


def write_results(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]], args: Any) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Delivery benchmark (`bench/deliver.py`)",
        "",
        f"{meta['users']:,} users in {meta['shards']} shards, one push each, pages of {meta['page']}; the gateway "
        f"(`devtools/gateway.py`, own process) answers after a lognormal latency with median "
        f"{meta['latency_median_ms']:g} ms; a private redis-server holds audience and ledger. Python "
        f"{meta['python']}, {meta['cpus']} CPUs shared with other engineers' work (load average before "
        f"{meta['load_before'][0]}, after {meta['load_after'][0]}): absolute figures move between runs; the "
        "ratios compare loops measured back to back against the same gateway.",
        "",
        "| latency sigma | in flight | (a) seed style msgs/s | (b) ours single msgs/s | (b)/(a) | "
        f"(c) ours batch {meta['batch']} msgs/s | (c)/(a) | latency-only ceiling of (a) / (b) / (b)/(a) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ca, cb = ceilings(r["sigma"], r["concurrency"], meta["latency_median_ms"] / 1000)
        lines.append(f"| {r['sigma']} | {r['concurrency']} | {r['seed']['msgs_per_s']:,} "
                     f"| {r['single']['msgs_per_s']:,} | **{r['single_x']}** | {r['batch']['msgs_per_s']:,} "
                     f"| **{r['batch_x']}** | {ca:,.0f} / {cb:,.0f} / {cb / ca:.2f} |")
    first = rows[0]
    lines += [
        "",
        f"Rate limits (sigma {first['sigma']}, shards in {meta['parallel']} processes at once as deployed, each with "
        f"{first['concurrency']} in flight, sharing one plan limit; rate = what the gateway accepted from first to "
        f"last message): single sends limited to {args.single_limit:g}/s achieved "
        f"{first['limit_single']['at_gateway_msgs_per_s']:,} msgs/s (**{first['limit_single_pct']}%**, "
        f"{args.limit_users:,} users; wall clock incl. process start-up {first['limit_single']['msgs_per_s']:,}); "
        f"batches of {meta['batch']} limited to {args.batch_limit:g}/s achieved "
        f"{first['limit_batch']['at_gateway_msgs_per_s']:,} msgs/s (**{first['limit_batch_pct']}%**; wall clock "
        f"{first['limit_batch']['msgs_per_s']:,}).",
        "",
        f"As deployed (one process per shard, {meta['parallel']} at once, each with {first['concurrency']} in flight, "
        f"single sends): {first['parallel']['msgs_per_s']:,} msgs/s, x{first['parallel_x']} the seed-style "
        "figure of the same row (more sends in flight in total, so not a like-for-like ratio).",
        "",
        "Goals: (b)/(a) >= 5 with single sends; >= 90% of a configured rate limit.",
        "",
        "The last column is what latency alone allows (no CPU cost per send, computed by simulation with the "
        "same lognormal): with the same number of sends in flight, the page barrier only loses the tail of each "
        "page, so the single-send ratio (b)/(a) cannot exceed that ceiling however the loop is written. Where "
        "(b) is well below its ceiling the sender (or the gateway, both Python on the same 2 shared cores) ran "
        "out of CPU.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
