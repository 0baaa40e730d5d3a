"""Benchmark: template attributes of the loaded audience, as the loader writes and the delivery reads them.

One audience like the 10M run of issue #13 (random integer uids, a ``nickname`` each, ``shards:
auto``), each code version in its own process on its own fresh redis-server:

- load: ``load_shards`` of the staging file with the ``nickname`` column, wall time, and the
  server's ``used_memory`` after minus before, per member (uids and attributes together);
- page reads: every page of 1,000 of the largest shard as the delivery's main pass reads it
  (``read_page`` + the page's attributes), process CPU and Redis CPU per member;
- reads by uid: the same members in shuffled pages of 1,000 (the deferred and orphan passes).

``baseline`` is the code of ``--baseline-ref`` (default ``main``, ``git archive`` into a temporary
folder), ``current`` is this worktree. Usage::

    .venv/bin/python bench/attr_chunks.py [--users 1000000] [--baseline-ref main|none]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = 1000


def _redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def worker(users: int, redis_url: str, workdir: Path, text_uids: bool = False) -> dict[str, Any]:
    """Load, then read, with whatever ``c2b`` is importable; return the measurements."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import redis as redis_lib
    from c2b.store import shards

    r = redis_lib.Redis.from_url(redis_url)
    staging = workdir / "staging.parquet"
    rng = np.random.default_rng(13)
    ids = rng.choice(np.arange(10_000_000, 10_000_000 + users * 4, dtype=np.int64), users, replace=False)
    uids = pa.array(ids.astype(str))
    if text_uids:  # not integers: the zset encoding
        uids = pa.array(np.char.add("u", ids.astype(str)))
    pq.write_table(pa.table({"uid": uids, "variant": pa.array(["a"] * users),
                             "nickname": pa.array([f"nick{i}" for i in range(users)])}), staging)
    before = int(r.info("memory")["used_memory"])
    t0 = time.monotonic()
    loaded = shards.load_shards(r, staging, "bench_attrs", "run1", "auto", ["nickname"])
    load_s = time.monotonic() - t0
    used = int(r.info("memory")["used_memory"]) - before
    layout = shards.read_layout(r, "bench_attrs", "run1")
    shard = max(loaded.shards, key=lambda s: loaded.shards[s])
    keys = shards.ShardKeys("bench_attrs", "run1", shard)
    chunked = shards.FORMAT != "2"
    reader = shards.AttrReader(r, keys, layout) if chunked else None

    def attrs_at(start: int, page: list[str]) -> list[dict[str, Any]]:
        if reader is not None:
            return reader.page(start, len(page))
        return shards.read_attrs(r, keys, page, layout.get("attr_parts", 1))

    def attrs_of(page: list[str]) -> list[dict[str, Any]]:
        if reader is not None:
            return reader.by_uid(page)
        return shards.read_attrs(r, keys, page, layout.get("attr_parts", 1))

    members: list[str] = []
    c0, p0, w0 = _redis_cpu(r), time.process_time(), time.perf_counter()
    start = 0
    while page := shards.read_page(r, keys, start, PAGE):
        got = attrs_at(start, page)
        assert len(got) == len(page) and got[0]["nickname"].startswith("nick")
        members += page
        start += len(page)
    pages = {"process_us": (time.process_time() - p0) / len(members) * 1e6,
             "redis_us": (_redis_cpu(r) - c0) / len(members) * 1e6,
             "wall_us": (time.perf_counter() - w0) / len(members) * 1e6}
    shuffled = members[:]
    random.Random(5).shuffle(shuffled)
    c0, p0, w0 = _redis_cpu(r), time.process_time(), time.perf_counter()
    for i in range(0, len(shuffled), PAGE):
        got = attrs_of(shuffled[i:i + PAGE])
        assert got[0]["nickname"].startswith("nick")
    by_uid = {"process_us": (time.process_time() - p0) / len(members) * 1e6,
              "redis_us": (_redis_cpu(r) - c0) / len(members) * 1e6,
              "wall_us": (time.perf_counter() - w0) / len(members) * 1e6}
    return {"users": users, "format": shards.FORMAT, "shards": len(loaded.non_empty), "largest": loaded.largest,
            "encoding": loaded.encoding, "load_s": load_s, "used_memory": used,
            "bytes_per_member": used / users,
            "load_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "read_shard_members": len(members), "pages": pages, "by_uid": by_uid}


def run_version(name: str, code: Path, users: int, tmp: Path, text_uids: bool = False) -> dict[str, Any]:
    """Run :func:`worker` in a fresh process against ``code``'s plugins, on a fresh redis-server."""
    sys.path.insert(0, str(ROOT))
    from devtools.servers import RedisServer

    server = RedisServer(tmp / f"redis-{name}").start()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code / "plugins"), str(ROOT)])}
        out = tmp / f"{name}.json"
        (tmp / name).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--users", str(users),
               "--redis-url", server.url, "--workdir", str(tmp / name), "--out", str(out),
               *(["--text-uids"] if text_uids else [])]
        subprocess.run(cmd, check=True, env=env, cwd=str(code))
        return json.loads(out.read_text())
    finally:
        server.stop()


def report(results: dict[str, dict[str, Any]], users: int) -> str:
    load = os.getloadavg()
    names = list(results)
    lines = [f"# Template attributes: load and reads ({users:,} users with a nickname)", "",
             "Command: `.venv/bin/python bench/attr_chunks.py --users N [--text-uids]`.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average at the end {load[0]:.2f} / "
             f"{load[1]:.2f} / {load[2]:.2f} (shared with other sessions: times are indicative, ratios less so).",
             "Each version in its own process on its own fresh redis-server; `shards: auto`; reads of the "
             f"largest shard in pages of {PAGE:,}.", "",
             "| | " + " | ".join(names) + (" | current / baseline |" if len(names) == 2 else " |"),
             "|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0))]

    def row(label: str, values: list[float], fmt: str = "{:,.2f}") -> None:
        ratio = [f"{values[1] / values[0]:.2f}x" if values[0] else "-"] if len(values) == 2 else []
        lines.append(f"| {label} | " + " | ".join([fmt.format(v) for v in values] + ratio) + " |")

    row("store format", [float(results[n]["format"]) for n in names], "{:.0f}")
    row("load, s", [results[n]["load_s"] for n in names])
    row("audience used_memory, B/member", [results[n]["bytes_per_member"] for n in names])
    row("audience used_memory, MB", [results[n]["used_memory"] / 1e6 for n in names], "{:,.1f}")
    row("loader peak RSS, MB", [results[n]["load_peak_rss_mb"] for n in names], "{:,.0f}")
    for part, label in (("pages", "page read (read_page + attributes)"), ("by_uid", "attributes by uid")):
        for what in ("process_us", "redis_us", "wall_us"):
            row(f"{label}, {what.replace('_us', '')} us/member", [results[n][part][what] for n in names])
    r0 = results[names[-1]]
    lines += ["", f"{r0['shards']} shards ({r0['encoding']}), largest {r0['largest']:,} members (the one read).", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--baseline-ref", default="main", help="git ref of the 'before' code, or 'none'")
    ap.add_argument("--text-uids", action="store_true", help="uids 'u<n>' (zset encoding) instead of integers")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.out).write_text(json.dumps(worker(args.users, args.redis_url, Path(args.workdir), args.text_uids)))
        return 0
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="c2b-attrs-") as tmp_s:
        tmp = Path(tmp_s)
        if args.baseline_ref != "none":
            base = tmp / "baseline-code"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline_ref, "plugins"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            print(f"baseline: {args.baseline_ref}", flush=True)
            results[f"baseline ({args.baseline_ref})"] = run_version("baseline", base, args.users, tmp,
                                                                     args.text_uids)
        print("current: this worktree", flush=True)
        results["current"] = run_version("current", ROOT, args.users, tmp, args.text_uids)
    text = report(results, args.users)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "attr_chunks_text_uids" if args.text_uids else "attr_chunks"
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"users": args.users, "loadavg": os.getloadavg(),
                                                          "results": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
