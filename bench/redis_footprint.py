"""Benchmark: the Redis memory a plan run leaves behind per audience member, and its largest keys.

One plan like the 10M run of issue #13 (every user, one outbox touch with ``{{ nickname }}``,
``shards: auto``), run step by step against a private redis-server: load the staging file into
shards, deliver every shard (``steps.step_deliver``: the ledger, checkpoint, contact and re-entry
history, frequency-cap counts), then the cleanup's ``drop_run``. Measured:

- ``INFO memory`` ``used_memory`` before the run, after delivery (before cleanup) and after cleanup;
- every key by family (SCAN + ``MEMORY USAGE``): bytes, keys, elements, largest key by bytes and by
  elements, TTL; families are the run's own keys (ledger, outcome records, stats...) and the
  cross-run state (contacts, re-entry history, frequency-cap counts), reported apart;
- during delivery, a sampler reads the size of the live ledger hash of the shard being delivered
  every 0.2 s (the largest it reached is a key of the run too).

Each code version runs in its own process on its own fresh redis-server: ``baseline`` is the code of
``--baseline-ref`` (default ``main``, extracted with ``git archive`` into a temporary folder),
``current`` is this worktree. Usage::

    .venv/bin/python bench/redis_footprint.py [--users 1000000] [--baseline-ref main|none]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.footprint import CROSS_RUN, measure  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LIMIT_BYTES = 1 << 20
LIMIT_ELEMENTS = 10_000
GOAL_BYTES_PER_MEMBER = 16

class LedgerSampler:
    """Reads the size of the live ledger hash of the shard being delivered, every ``every`` s."""

    def __init__(self, redis: Any, every: float = 0.2) -> None:
        self.redis = redis
        self.every = every
        self.key: str | None = None
        self.largest = {"key": None, "bytes": 0, "elements": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            key = self.key
            if key is None:
                continue
            try:
                n = int(self.redis.hlen(key))
                b = int(self.redis.memory_usage(key, samples=0) or 0)
            except Exception:  # noqa: BLE001 (a sample lost is not a result)
                continue
            if b > self.largest["bytes"] or n > self.largest["elements"]:
                self.largest = {"key": key, "bytes": max(b, self.largest["bytes"]),
                                "elements": max(n, self.largest["elements"])}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def worker(users: int, redis_url: str, workdir: Path) -> dict[str, Any]:
    """Run the plan on ``users`` users with whatever ``c2b`` is importable; return the measurements."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import redis as redis_lib
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.plan.load import parse_plan
    from c2b.store.shards import ShardKeys, drop_run, load_shards

    r = redis_lib.Redis.from_url(redis_url)
    plan = parse_plan({
        "id": "bench_footprint", "audience": {"all": True},
        "touches": [{"name": "note", "channel": "outbox", "template": "Hi {{ nickname }}, sell now"}],
        "delivery": {"shards": "auto", "page_size": 1000, "concurrency": 16},
    }, "<bench>")
    run_id = "run1"
    staging = workdir / "staging.parquet"
    rng = np.random.default_rng(13)
    ids = rng.choice(np.arange(10_000_000, 10_000_000 + users * 4, dtype=np.int64), users, replace=False)
    pq.write_table(pa.table({"uid": pa.array(ids.astype(str)),
                             "nickname": pa.array([f"n{i % 9973}" for i in range(users)])}), staging)
    before = measure(r)
    t0 = time.monotonic()
    d = plan.delivery
    loaded = load_shards(r, staging, plan.id, run_id, d.shards, ["nickname"],
                         ttl_seconds=int(d.key_ttl_hours * 3600), max_shard_members=d.max_shard_members,
                         encoding=d.encoding)
    t_load = time.monotonic() - t0
    sampler = LedgerSampler(r)
    t0 = time.monotonic()
    sent = 0
    for shard in loaded.non_empty:
        sampler.key = ShardKeys(plan.id, run_id, shard).ledger
        channels = {t.name: make_channel(t.channel, ChannelConfig(run_dir=str(workdir / "outbox")))
                    for t in plan.touches}
        stats = steps.step_deliver(plan, run_id, shard, r, channels, lambda: False)
        sent += sum(n for k, n in stats["counts"].items() if k.endswith("|sent"))
    sampler.stop()
    t_deliver = time.monotonic() - t0
    delivered = measure(r)
    drop_run(r, plan.id, run_id)
    after = measure(r)
    return {"users": users, "shards": len(loaded.non_empty), "largest_shard": loaded.largest, "sent": sent,
            "encoding": loaded.encoding, "load_s": round(t_load, 1), "deliver_s": round(t_deliver, 1),
            "before": before, "delivered": delivered, "after": after, "live_ledger_peak": sampler.largest}


def history_worker(users: int, redis_url: str) -> dict[str, Any]:
    """Write ``users`` users into the contact history and one plan's re-entry history, as the
    recorder does (flushes of 500 sends), then read them back as the extract does (batches of
    262,144 uids through the plan's re-entry rule); return sizes and times."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import redis as redis_lib
    from c2b.delivery.contacts import record_contacts
    from c2b.delivery.reentry import ReentryRule, record_sends
    from c2b.plan.load import parse_plan

    r = redis_lib.Redis.from_url(redis_url)
    plan = parse_plan({"id": "bench_history", "audience": {"all": True}, "reentry": {"after_days": 7},
                       "touches": [{"name": "note", "channel": "outbox", "template": "Hi"}]}, "<bench>")
    now = datetime.now(UTC)
    record = record_sends(plan, record_contacts)
    before = measure(r)
    t0 = time.monotonic()
    for start in range(0, users, 500):
        record(r, [str(10_000_000 + 3 * i) for i in range(start, min(start + 500, users))], now)
    t_record = time.monotonic() - t0
    after = measure(r)
    rule = ReentryRule(plan, r, now)
    t0 = time.monotonic()
    hits = 0
    for start in range(0, users, 262_144):
        batch = pa.array([str(10_000_000 + 3 * i) for i in range(start, min(start + 262_144, users))])
        hits += int(rule.matches(batch).sum())
    t_lookup = time.monotonic() - t0
    if hits != users:
        raise AssertionError(f"re-entry lookup found {hits} of {users} recorded users")
    return {"users": users, "record_s": round(t_record, 1), "lookup_s": round(t_lookup, 1),
            "before": before, "after": after}


def run_history(name: str, code: Path, users: int, tmp: Path) -> dict[str, Any]:
    from devtools.servers import RedisServer

    server = RedisServer(tmp / f"redis-history-{name}").start()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code / "plugins"), str(ROOT)])}
        out = tmp / f"history-{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--history-worker", "--users", str(users),
               "--redis-url", server.url, "--out", str(out)]
        subprocess.run(cmd, check=True, env=env, cwd=str(code))
        return json.loads(out.read_text())
    finally:
        server.stop()


def history_report(hist: dict[str, dict[str, Any]]) -> list[str]:
    if not hist:
        return []
    names = list(hist)
    users = next(iter(hist.values()))["users"]
    lines = [f"## Cross-run histories at {users:,} users", "",
             f"Contact history and one plan's re-entry history written for {users:,} users as the recorder "
             "does (flushes of 500), then read back through the plan's re-entry rule as the extract does "
             "(batches of 262,144); each version on its own fresh redis-server.", "",
             "| | " + " | ".join(names) + (" | current / baseline |" if len(names) == 2 else " |"),
             "|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0))]

    def row(label: str, values: list[float]) -> None:
        ratio = [f"{values[1] / values[0]:.2f}x" if values[0] else "-"] if len(values) == 2 else []
        lines.append(f"| {label} | " + " | ".join([f"{v:,.2f}" for v in values] + ratio) + " |")

    for fam in ("contacts", "reentry"):
        row(f"{fam}, B/user", [hist[n]["after"]["families"][fam]["bytes"] / users for n in names])
        row(f"{fam}, largest key B", [hist[n]["after"]["families"][fam]["largest_bytes"]["bytes"] for n in names])
        row(f"{fam}, largest key elements",
            [hist[n]["after"]["families"][fam]["largest_elements"]["elements"] for n in names])
    row("used_memory, B/user", [(hist[n]["after"]["used_memory"] - hist[n]["before"]["used_memory"]) / users
                                for n in names])
    row("record both histories, s", [hist[n]["record_s"] for n in names])
    row("re-entry lookup of every user (extract), s", [hist[n]["lookup_s"] for n in names])
    return [*lines, ""]


def run_version(name: str, code: Path, users: int, tmp: Path) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process against ``code``'s plugins, on a fresh redis-server."""
    sys.path.insert(0, str(ROOT))
    from devtools.servers import RedisServer

    server = RedisServer(tmp / f"redis-{name}").start()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code / "plugins"), str(ROOT)])}
        out = tmp / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--users", str(users),
               "--redis-url", server.url, "--workdir", str(tmp / name), "--out", str(out)]
        started = time.monotonic()
        subprocess.run(cmd, check=True, env=env, cwd=str(code))
        result = json.loads(out.read_text())
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["code"] = str(code)
        return result
    finally:
        server.stop()


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Bytes per member left after cleanup (run's own keys and cross-run state) and the key limits."""
    users = result["users"]
    fams = result["after"]["families"]
    own = {k: v for k, v in fams.items() if k not in CROSS_RUN}
    cross = {k: v for k, v in fams.items() if k in CROSS_RUN}
    largest: list[dict[str, Any]] = []
    for stage in ("delivered", "after"):
        for fam, f in result[stage]["families"].items():
            for which in ("largest_bytes", "largest_elements"):
                if f[which]:
                    largest.append({**f[which], "family": fam})
    peak = result.get("live_ledger_peak") or {}
    if peak.get("key"):
        largest.append({"key": peak["key"], "type": "hash", "bytes": peak["bytes"], "elements": peak["elements"],
                        "family": "ledger (live, sampled)"})
    by_bytes = max(largest, key=lambda k: k["bytes"])
    by_elements = max(largest, key=lambda k: k["elements"])
    over = sorted({(k["family"], k["key"]) for k in largest
                   if k["bytes"] > LIMIT_BYTES or k["elements"] > LIMIT_ELEMENTS})
    used_delta = result["after"]["used_memory"] - result["before"]["used_memory"]
    return {
        "used_memory_left_per_member": round(used_delta / users, 2),
        "run_own_bytes_per_member": round(sum(f["bytes"] for f in own.values()) / users, 2),
        "cross_run_bytes_per_member": round(sum(f["bytes"] for f in cross.values()) / users, 2),
        "per_family_bytes_per_member": {k: round(v["bytes"] / users, 2) for k, v in sorted(fams.items())},
        "largest_by_bytes": by_bytes, "largest_by_elements": by_elements,
        "keys_over_limit": [f"{fam}: {key}" for fam, key in over],
    }


def _fmt_key(k: dict[str, Any]) -> str:
    return f"`{k['key']}` ({k['family']}, {k['type']}, {k['bytes']:,} B, {k['elements']:,} elements)"


def report(results: dict[str, dict[str, Any]], users: int) -> str:
    load = os.getloadavg()
    lines = [f"# Redis footprint of one plan run ({users:,} users)", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared with other sessions: times are indicative).",
             "Plan: every user, one outbox touch with `{{ nickname }}`, `shards: auto`; steps: load, deliver "
             "every shard (`steps.step_deliver`), cleanup (`drop_run`). Each version on its own fresh redis-server "
             "(7.x, default config). Goal: no key above 1 MB or 10k elements; <= 16 B per member left.", ""]
    s = {name: summarize(r) for name, r in results.items()}
    names = list(results)
    lines += ["| | " + " | ".join(names) + (" | current / baseline |" if len(names) == 2 else " |"),
              "|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0))]

    def row(label: str, values: list[float], unit: str = "") -> None:
        cells = [f"{v:,.2f}{unit}" for v in values]
        ratio = [f"{values[1] / values[0]:.2f}x" if values[0] else "-"] if len(values) == 2 else []
        lines.append(f"| {label} | " + " | ".join(cells + ratio) + " |")

    row("used_memory left after cleanup, B/member", [s[n]["used_memory_left_per_member"] for n in names])
    row("run's own keys left, B/member", [s[n]["run_own_bytes_per_member"] for n in names])
    row("cross-run state (contacts, re-entry, fcap), B/member", [s[n]["cross_run_bytes_per_member"] for n in names])
    fams = sorted({f for n in names for f in s[n]["per_family_bytes_per_member"]})
    for f in fams:
        row(f"  {f}, B/member", [s[n]["per_family_bytes_per_member"].get(f, 0.0) for n in names])
    row("load, s", [results[n]["load_s"] for n in names])
    row("deliver (all shards in turn), s", [results[n]["deliver_s"] for n in names])
    lines.append("")
    for n in names:
        r = results[n]
        lines += [f"## {n}", "", f"Code: `{r['code']}`; {r['shards']} shards (largest {r['largest_shard']:,} "
                  f"members, {r['encoding']}), {r['sent']:,} sent.",
                  f"- largest key by bytes (during or after the run): {_fmt_key(s[n]['largest_by_bytes'])}",
                  f"- largest key by elements: {_fmt_key(s[n]['largest_by_elements'])}",
                  f"- keys over 1 MB or 10k elements: {len(s[n]['keys_over_limit'])} "
                  + (f"(families: {', '.join(sorted({k.split(':')[0] for k in s[n]['keys_over_limit']}))})"
                     if s[n]["keys_over_limit"] else ""), ""]
        lines += ["| family (after cleanup) | keys | B/member | largest key B | largest key elements | max TTL s |",
                  "|---|---|---|---|---|---|"]
        for f, v in sorted(r["after"]["families"].items()):
            lines.append(f"| {f} | {v['keys']:,} | {v['bytes'] / r['users']:.2f} | {v['largest_bytes']['bytes']:,} | "
                         f"{v['largest_elements']['elements']:,} | {v['max_ttl']:,} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--baseline-ref", default="main", help="git ref of the 'before' code, or 'none'")
    ap.add_argument("--history-users", type=int, default=10_000_000,
                    help="users written into the cross-run histories alone (0: skip)")
    ap.add_argument("--histories-only", action="store_true",
                    help="measure only the cross-run histories (results in redis_footprint_histories.md/.json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--history-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.history_worker:
        Path(args.out).write_text(json.dumps(history_worker(args.users, args.redis_url)))
        return 0
    if args.worker:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(worker(args.users, args.redis_url, workdir)))
        return 0
    results: dict[str, dict[str, Any]] = {}
    hist: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="c2b-footprint-") as tmp_s:
        tmp = Path(tmp_s)
        if args.baseline_ref != "none":
            base = tmp / "baseline-code"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "plugins"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            if not args.histories_only:
                print(f"baseline: {args.baseline_ref} ({users_label(args.users)})", flush=True)
                results[f"baseline ({args.baseline_ref})"] = run_version("baseline", base, args.users, tmp)
            if args.history_users:
                print(f"baseline histories ({users_label(args.history_users)})", flush=True)
                hist[f"baseline ({args.baseline_ref})"] = run_history("baseline", base, args.history_users, tmp)
        if not args.histories_only:
            print(f"current: this worktree ({users_label(args.users)})", flush=True)
            results["current"] = run_version("current", ROOT, args.users, tmp)
        if args.history_users:
            print(f"current histories ({users_label(args.history_users)})", flush=True)
            hist["current"] = run_history("current", ROOT, args.history_users, tmp)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.histories_only:
        load = os.getloadavg()
        text = "\n".join([f"# Redis footprint of the cross-run histories ({args.history_users:,} users)", "",
                          f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end "
                          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared: times are indicative).", "",
                          *history_report(hist)])
        (RESULTS / "redis_footprint_histories.md").write_text(text)
        (RESULTS / "redis_footprint_histories.json").write_text(json.dumps(
            {"users": args.history_users, "loadavg": load, "histories": hist}, indent=1, default=str))
        print(text)
        return 0
    text = report(results, args.users) + "\n".join(history_report(hist))
    (RESULTS / "redis_footprint.md").write_text(text)
    (RESULTS / "redis_footprint.json").write_text(json.dumps(
        {"users": args.users, "loadavg": os.getloadavg(), "results": results, "histories": hist,
         "summary": {n: summarize(r) for n, r in results.items()}}, indent=1, default=str))
    print(text)
    return 0


def users_label(users: int) -> str:
    return f"{users:,} users"


if __name__ == "__main__":
    sys.exit(main())
