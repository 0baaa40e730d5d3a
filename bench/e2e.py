"""A whole plan end to end on the live Airflow stacks, measured per stage, with the anchors of the same run.

What it runs (issue #13, items 5 and 6):

- **big**: the demo warehouse with ``--users`` users (built once, cached under ``--cache``), the live
  CeleryExecutor stack of ``make cluster`` (:class:`devtools.airflow_stack.AirflowStack`: api-server,
  scheduler, dag-processor, triggerer, two ``airflow celery worker``; PostgreSQL metadata DB, Redis
  broker), and two plans triggered through the REST API: (a) every user (``all_users.sql``), an
  outbox touch rendering ``{{ nickname }}``, ``shards: auto``; (b) the same audience with a batch
  HTTP touch against a local gateway (devtools/gateway.py in its own process, counting only).
- **demo**: the demo plan (``dags/plans/growth/cancelled_price_coupon.yaml``, 6,481 rows on the
  200k-user warehouse) trigger to end on LocalExecutor (SQLite) and on the Celery stack.

Per run it reports the wall time of each stage from the task instances (extract_audience,
load_shards, deliver = first start to last end of the mapped tasks, report), trigger to end (the
run's ``queued_at`` to ``end_date``), messages/s over the deliver stage, and the peak RSS of every
process of the stack (psutil polling of each component's process tree, every 0.5 s: the workers'
forked task processes included), of the audience Redis and of the gateway.

The anchors, measured in the same run on the same machine:

- ``duckdb_copy``: DuckDB ``COPY (<segment>) TO '<parquet>'`` of the big plan's segment;
- ``redis_pipe``: ``redis-cli --pipe`` of the shard data the loader writes (packed uid strings and
  the ``nickname`` attribute hashes), its protocol generated from that Parquet file beforehand;
- ``outbox_write``: the raw write rate of the outbox format (one ``json.dumps`` line per message of
  the same shape, appended to a file), single process.

Usage::

    python bench/e2e.py --users 1000000            # develop at 1M
    python bench/e2e.py --users 10000000           # the measurement (machine shared: run it rarely)
    python bench/e2e.py --only demo                # item 6 only

Writes bench/results/e2e.md and .json (``--out`` to write elsewhere). The machine's load average
is recorded before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))

from devtools.airflow_stack import (  # noqa: E402
    CELERY,
    FAST_FAILURE_DETECTION,
    LOCAL,
    AirflowStack,
    base_env,
    celery_settings,
    drop_postgres_database,
    ensure_postgres_database,
    free_port,
)
from devtools.servers import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEMO_USERS = 200_000  # `make demo`'s warehouse
DEMO_PLAN = "cancelled_price_coupon"
GOAL_BIG_S, GOAL_RSS_MIB, GOAL_DEMO_S = 180.0, 1024.0, 30.0
STAGES = ("extract_audience", "load_shards", "deliver", "report", "cleanup")


def plan_outbox(users: int, shards_per_task: int = 1, page_size: int = 100) -> str:
    return f"""\
id: e2e_outbox
description: Every user, one outbox message rendering the nickname (bench/e2e.py, {users:,} users).
schedule: null
audience: {{segment: all_users.sql}}
touches:
  - name: hello
    channel: outbox
    template: "Hi {{{{ nickname }}}}, a new quote is waiting for you."
delivery:
  shards: auto
  shards_per_task: {shards_per_task}
  page_size: {page_size}
  retries: 1
  retry_delay_seconds: 5
"""


def plan_http(users: int, shards_per_task: int = 1, page_size: int = 100) -> str:
    return f"""\
id: e2e_http
description: Every user, one push through a batch HTTP gateway (bench/e2e.py, {users:,} users).
schedule: null
audience: {{segment: all_users.sql}}
touches:
  - name: hello
    channel: push
    connection: c2b_e2e_gateway
    template: "Hi {{{{ nickname }}}}, a new quote is waiting for you."
delivery:
  shards: auto
  shards_per_task: {shards_per_task}
  page_size: {page_size}
  retries: 1
  retry_delay_seconds: 5
"""


# --- the warehouse ------------------------------------------------------------------------------------

def warehouse(users: int, cache: Path) -> tuple[Path, float | None]:
    """Build (or reuse today's) demo warehouse of ``users`` users, in a child process."""
    today = datetime.now(UTC).date().isoformat()
    path = cache / f"warehouse_{users}.duckdb"
    stamp = path.with_name(path.name + ".as_of")
    if path.exists() and stamp.exists() and stamp.read_text() == today:
        return path, None
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "devtools.demo_warehouse", "--path", str(path), "--users", str(users),
                    "--seed", "42", "--as-of", today], check=True, cwd=ROOT)
    stamp.write_text(today)
    return path, time.perf_counter() - started


# --- peak RSS of every process ----------------------------------------------------------------------

class RssWatch:
    """Poll the process trees of named roots; keep each process's peak RSS (MiB) and what it was."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.roots: dict[str, int] = {}
        self.peaks: dict[tuple[str, int], dict[str, Any]] = {}
        self.cpu_base: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        """Forget the peaks; count CPU time from now on (what long-lived processes used so far is not this run's)."""
        import psutil

        self.peaks = {}
        self.cpu_base = {}
        for pid in self.roots.values():
            try:
                for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                    cpu = p.cpu_times()
                    self.cpu_base[p.pid] = cpu.user + cpu.system
            except psutil.NoSuchProcess:
                pass

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            for name, pid in list(self.roots.items()):
                try:
                    root = psutil.Process(pid)
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for p in procs:
                    try:
                        rss = p.memory_info().rss / 2**20
                        key = (name, p.pid)
                        seen = self.peaks.get(key)
                        if seen is None:
                            cmd = " ".join(p.cmdline()[1:4])[:80]
                            seen = self.peaks[key] = {"component": name, "pid": p.pid, "root": p.pid == pid,
                                                      "cmd": cmd, "peak_mib": 0.0}
                        seen["peak_mib"] = max(seen["peak_mib"], rss)
                        cpu = p.cpu_times()
                        seen["cpu_s"] = cpu.user + cpu.system - self.cpu_base.get(p.pid, 0.0)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        pass

    def summary(self) -> dict[str, Any]:
        """Per component: the root's peak, the largest child's peak and how many children were seen."""
        out: dict[str, Any] = {}
        for seen in self.peaks.values():
            c = out.setdefault(seen["component"], {"root_mib": 0.0, "child_max_mib": 0.0, "children": 0,
                                                  "child_cmd": "", "cpu_s": 0.0})
            c["cpu_s"] = round(c["cpu_s"] + max(seen.get("cpu_s", 0.0), 0.0), 1)
            if seen["root"]:
                c["root_mib"] = round(max(c["root_mib"], seen["peak_mib"]), 1)
            else:
                c["children"] += 1
                if seen["peak_mib"] > c["child_max_mib"]:
                    c["child_max_mib"], c["child_cmd"] = round(seen["peak_mib"], 1), seen["cmd"]
        return dict(sorted(out.items()))


def max_stack_rss(rss: dict[str, Any]) -> float:
    return max((max(c["root_mib"], c["child_max_mib"]) for name, c in rss.items()
                if name not in ("audience-redis", "broker-redis", "gateway")), default=0.0)


# --- runs -----------------------------------------------------------------------------------------------

def _ts(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def stage_times(tis: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time per task id (first start to last end), with the mapped tasks' own durations."""
    out: dict[str, Any] = {}
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tis:
        by_task[t["task_id"]].append(t)
    for task, its in by_task.items():
        starts = [_ts(t["start_date"]) for t in its if t["start_date"]]
        # A task still running (a run cut short) counts until now.
        ends = [_ts(t["end_date"]) or time.time() for t in its if t["start_date"]]
        durations = sorted(float(t["duration"] or 0) for t in its)
        out[task] = {"tasks": len(its), "states": sorted({t["state"] for t in its}),
                     "wall_s": round(max(ends) - min(starts), 2) if starts and ends else None,
                     "start": min(starts) if starts else None, "end": max(ends) if ends else None,
                     "task_s_min": round(durations[0], 2), "task_s_median": round(durations[len(durations) // 2], 2),
                     "task_s_max": round(durations[-1], 2), "task_s_sum": round(sum(durations), 1),
                     "hosts": sorted({str(t.get("hostname")) for t in its}),
                     "tries": max(int(t.get("try_number") or 1) for t in its),
                     "unfinished": sum(1 for t in its if not t["end_date"])}
    return out


def trigger(stack: AirflowStack, dag_id: str) -> str:
    """Unpause and trigger (a loaded 2-core machine can take more than the stack's 10 s per request)."""
    import requests

    r = requests.patch(f"{stack.url}/api/v2/dags/{dag_id}?update_mask=is_paused", json={"is_paused": False},
                       timeout=120)
    r.raise_for_status()
    r = requests.post(f"{stack.url}/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {}},
                      timeout=120)
    r.raise_for_status()
    return str(r.json()["dag_run_id"])


def all_task_instances(stack: AirflowStack, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """Every task instance of the run (the API answers at most 100 a page: a 128-shard run has more)."""
    out: list[dict[str, Any]] = []
    while True:
        page = stack.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(out)}")
        out += page["task_instances"]
        if not page["task_instances"] or len(out) >= int(page.get("total_entries", 0)):
            return out


def sent_so_far(audience: RedisServer, dag_id: str) -> int:
    """Messages the run's shard ledgers count as sent (what a run cut short had sent)."""
    import redis

    r = redis.Redis(port=audience.port, socket_timeout=600)
    total = 0
    for key in r.scan_iter(match=f"c2b:{{{dag_id}:*}}:stats", count=1000):
        total += sum(int(v) for k, v in r.hgetall(key).items() if k.endswith(b"|sent"))
    return total


def run_plan(stack: AirflowStack, dag_id: str, rss: RssWatch, timeout: float,
             audience: RedisServer | None = None) -> dict[str, Any]:
    stack.wait_for_dag(dag_id, timeout=180)
    rss.reset()
    wall = time.time()
    run_id = trigger(stack, dag_id)
    try:
        state = stack.wait_for_run(dag_id, run_id, timeout)
    except AssertionError:  # cut short: report what it did so far
        state = f"still running after {timeout:.0f} s (cut short)"
    observed = time.time() - wall
    run = stack.get(f"dags/{dag_id}/dagRuns/{run_id}")
    tis = all_task_instances(stack, dag_id, run_id)
    stages = stage_times(tis)
    queued, ended = _ts(run.get("queued_at")) or wall, _ts(run.get("end_date"))
    summary: dict[str, Any] = {}
    try:
        summary = stack.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances/report/xcomEntries/return_value")["value"]
        if isinstance(summary, str):
            summary = json.loads(summary)
    except Exception as exc:  # noqa: BLE001 - the figures stand without the summary
        summary = {"error": repr(exc)}
    sent = sum(n for k, n in (summary.get("outcomes") or {}).items() if k.endswith("|sent"))
    if not sent and audience is not None:
        sent = sent_so_far(audience, dag_id)
    deliver = stages.get("deliver", {})
    first = min((s["start"] for s in stages.values() if s.get("start")), default=None)
    out = {"dag_id": dag_id, "run_id": run_id, "state": state,
           "trigger_to_end_s": round(ended - queued, 2) if ended and not state.startswith("still") else
           round(observed, 2),
           "queued_to_first_task_s": round(first - queued, 2) if first else None,
           "observed_s": round(observed, 2), "sent": sent,
           "audience": summary.get("audience"), "status": summary.get("status"),
           "failures": summary.get("failures"),
           "messages_per_s": round(sent / deliver["wall_s"]) if sent and deliver.get("wall_s") else None,
           "stages": stages, "rss": rss.summary(), "load_at_end": [round(x, 2) for x in os.getloadavg()]}
    out["max_stack_rss_mib"] = round(max_stack_rss(out["rss"]), 1)
    out["cpu_s_total"] = round(sum(c.get("cpu_s", 0.0) for n, c in out["rss"].items() if n != "gateway"), 1)
    print(f"  {dag_id}: {state} in {out['trigger_to_end_s']} s, sent {sent:,}, "
          + ", ".join(f"{k} {v['wall_s']} s ({v['tasks']})" for k, v in stages.items()), flush=True)
    return out


def stack_env(home: Path, dags: Path, data: Path, audience: RedisServer, warehouse_link: Path,
              gateway_url: str | None) -> dict[str, str]:
    env = {"AIRFLOW_CONN_C2B_REDIS": f"{audience.url}/?db=0",
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(warehouse_link)}),
           "C2B_DATA_DIR": str(data)}
    if gateway_url:
        host, port = gateway_url.removeprefix("http://").split(":")
        conn = {"conn_type": "http", "host": host, "port": int(port), "schema": "send"}
        env["AIRFLOW_CONN_C2B_E2E_GATEWAY"] = json.dumps({**conn, "extra": {"batch_size": 1000, "timeout": 30}})
        for name in ("AIRFLOW_CONN_C2B_PUSH", "AIRFLOW_CONN_C2B_SMS", "AIRFLOW_CONN_C2B_PRIVATE_DOMAIN"):
            env[name] = json.dumps(conn)
    return env


def make_dags(dags: Path, users: int, shards_per_task: int = 1, page_size: int = 100) -> None:
    dags.mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", dags)
    shutil.copy(ROOT / "dags" / "plans.yaml", dags)
    shutil.copytree(ROOT / "dags" / "plans", dags / "plans")
    # Manual runs only: unpausing a scheduled plan would also start its latest scheduled run (twice
    # the work, and re-entry then leaves the triggered run without an audience).
    demo = next((dags / "plans").glob(f"*/{DEMO_PLAN}.yaml"))
    text = demo.read_text()
    assert 'schedule: "@daily"' in text, f"{demo}: expected a daily schedule to replace"
    demo.write_text(text.replace('schedule: "@daily"', "schedule: null"))
    (dags / f"{WARMUP_DAG}.py").write_text(WARMUP)
    (dags / "plans" / "e2e_outbox.yaml").write_text(plan_outbox(users, shards_per_task, page_size))
    (dags / "plans" / "e2e_http.yaml").write_text(plan_http(users, shards_per_task, page_size))


WARMUP_DAG = "e2e_warmup"
WARMUP = f'''"""Warm-up of a freshly started stack (bench/e2e.py): one trivial task on each worker slot kind.

A new api-server imports its task-execution routes on the first task's first call (15.6 s on this
loaded machine, which the Task SDK client met with two retries): a cost a running deployment
pays once, not per campaign, so the measured runs start after this DAG has run once.
"""
from datetime import datetime

from airflow.sdk import DAG, task

with DAG("{WARMUP_DAG}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    @task
    def ready() -> str:
        return "ok"

    ready()
'''


def warm_up(stack: AirflowStack) -> float:
    """Run the warm-up DAG once; return its trigger-to-end seconds (the stack's cold start)."""
    stack.wait_for_dag(WARMUP_DAG, timeout=180)
    started = time.time()
    run_id = trigger(stack, WARMUP_DAG)
    state = stack.wait_for_run(WARMUP_DAG, run_id, 600)
    assert state == "success", f"warm-up DAG ended {state}"
    return round(time.time() - started, 2)


def create_pools(stack: AirflowStack) -> None:
    """The business lines' pools (as `make ui` creates them): a line's tasks wait for its pool."""
    import requests

    for line in sorted((ROOT / "dags" / "plans").glob("*/line.yaml")):
        import yaml

        pool = (yaml.safe_load(line.read_text()) or {}).get("pool")
        if pool:
            requests.post(f"{stack.url}/api/v2/pools", json={"name": pool, "slots": 16}, timeout=10)


def point(link: Path, target: Path) -> None:
    """Point the stack's warehouse path at ``target`` (a symlink swap: the connection stays the same)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


# What cleanup moves out of Redis onto the run artifacts' storage (C2B_DATA_URL): the ledger
# archives and the contact and re-entry history files. Cross-run state, like the Redis keys: each
# measured run starts without it (a demo run after another would otherwise find every user in the
# plan's re-entry file and send nobody).
MOVED_OUT = {"ledger_archive_bytes": ("ledgers", "*.ledger"), "history_files_bytes": ("", "*.history")}


def flush(audience: RedisServer, data: Path, measure: bool = False) -> dict[str, Any]:
    """Empty the store a run leaves (the audience Redis and what cleanup moved to ``data``); with
    ``measure``, first say what was there: Redis memory, each key by family and the largest, and
    the size of the files cleanup wrote."""
    import redis

    r = redis.Redis(port=audience.port, socket_timeout=600)
    info = r.info("memory")
    left: dict[str, Any] = {"used_memory_mib": round(int(info["used_memory"]) / 2**20, 1), "keys": int(r.dbsize())}
    if measure:
        from devtools.footprint import measure as by_family

        fams = by_family(r)["families"]
        left["families"] = {name: {"keys": f["keys"], "bytes": f["bytes"]} for name, f in sorted(fams.items())}
        left["largest_bytes"] = max((f["largest_bytes"] for f in fams.values()), key=lambda k: k["bytes"], default=None)
        left["largest_elements"] = max((f["largest_elements"] for f in fams.values()),
                                       key=lambda k: k["elements"], default=None)
        for name, (folder, pattern) in MOVED_OUT.items():
            left[name] = sum(p.stat().st_size for p in (data / folder).rglob(pattern))
    for folder in ("ledgers", "contacts", "reentry"):
        shutil.rmtree(data / folder, ignore_errors=True)
    r.flushall(asynchronous=True)  # GBs after a big run: freed off Redis' main thread
    return left


def empty_used_memory(audience: RedisServer) -> int:
    """Return the audience Redis's ``used_memory`` once empty (after :func:`flush`'s background
    free): the server's own baseline (~1.3 MB: its tables, buffers, the Lua engine), which the run
    did not leave and which :func:`left_behind` subtracts as a second figure."""
    import redis

    r = redis.Redis(port=audience.port, socket_timeout=600)
    deadline = time.monotonic() + 120
    while int(r.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return int(r.info("memory")["used_memory"])


def left_behind(left: dict[str, Any], members: int) -> list[str]:
    """Lines on what a run left in Redis per audience member, by key family, and its largest key."""
    if not left.get("families") or not members:
        return []
    fams = ", ".join(f"{name} {f['bytes'] / members:.1f} ({f['keys']:,} keys)"
                     for name, f in sorted(left["families"].items(), key=lambda kv: -kv[1]["bytes"]))
    big, many = left["largest_bytes"], left["largest_elements"]
    empty = left.get("used_memory_empty_bytes")
    growth = (f" ({(left['used_memory_mib'] * 2**20 - empty) / members:.1f} B per member above the empty "
              f"server's {empty / 2**20:.2f} MiB before the run)") if empty else ""
    return [f"Left in the audience Redis after the run, `MEMORY USAGE` by key family, bytes per audience member "
            f"({members:,}): {fams}; `used_memory` {left['used_memory_mib'] * 2**20 / members:.1f} B per member"
            f"{growth}. "
            f"Largest key: `{big['key']}` ({big['type']}, {big['bytes']:,} B); most elements: `{many['key']}` "
            f"({many['elements']:,}). The run's ledger archive (moved out of Redis by cleanup, on the run "
            f"artifacts' storage): {left['ledger_archive_bytes'] / 2**20:.1f} MiB "
            f"({left['ledger_archive_bytes'] / members:.1f} B per member)"
            + (f"; the contact and re-entry history files: {left['history_files_bytes'] / 2**20:.1f} MiB"
               if "history_files_bytes" in left else "") + ".", ""]


# --- anchors --------------------------------------------------------------------------------------------

ANCHOR_CHILD = r"""
import json, sys, time, duckdb
warehouse, sql, out = sys.argv[1:4]
con = duckdb.connect(warehouse, read_only=True)
con.execute("SET memory_limit = '512MB'")
t = time.perf_counter()
con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet)")
took = time.perf_counter() - t
n = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
print(json.dumps({"seconds": took, "rows": n}))
"""


def anchor_duckdb_copy(warehouse_path: Path, parquet: Path) -> dict[str, Any]:
    sql = (ROOT / "include" / "sql" / "segments" / "all_users.sql").read_text()
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--")).strip().rstrip(";")
    done = subprocess.run([sys.executable, "-c", ANCHOR_CHILD, str(warehouse_path), sql, str(parquet)],
                          capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["rows_per_s"] = round(r["rows"] / r["seconds"])
    return r


def write_pipe_protocol(parquet: Path, out: Path, shards: int) -> dict[str, Any]:
    """RESP of what the loader writes per shard: APPENDs of packed int64 uids and HSETs of the
    ``nickname`` attributes (JSON per uid, 500 fields a command)."""
    import numpy as np
    import pyarrow.parquet as pq
    from c2b.hashing import murmur3_32_arrow, shard_of_hashes

    def cmd(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    commands, users = 0, 0
    with out.open("wb") as f, pq.ParquetFile(parquet) as pf:
        for batch in pf.iter_batches(batch_size=1 << 18, columns=["uid", "nickname"]):
            uids = batch.column(0).cast("string")
            nick = batch.column(1).to_pylist()
            idx = np.asarray(shard_of_hashes(murmur3_32_arrow(uids), shards))
            ints = np.asarray(batch.column(0).cast("int64"), dtype="<i8")
            ustr = uids.to_pylist()
            order = np.argsort(idx, kind="stable")
            counts = np.bincount(idx, minlength=shards + 1)
            pos = 0
            for s in np.flatnonzero(counts).tolist():
                sel = order[pos:pos + counts[s]]
                pos += counts[s]
                f.write(cmd(b"APPEND", b"pipe:{%d}:pk" % s, ints[sel].tobytes()))
                commands += 1
                key = b"pipe:{%d}:attrs" % s
                for i in range(0, len(sel), 500):
                    part = sel[i:i + 500].tolist()
                    fields = [x for j in part for x in (ustr[j].encode(),
                                                        json.dumps({"nickname": nick[j]}, ensure_ascii=False).encode())]
                    f.write(cmd(b"HSET", key, *fields))
                    commands += 1
            users += len(uids)
    return {"commands": commands, "users": users, "bytes": out.stat().st_size}


def anchor_redis_pipe(parquet: Path, workdir: Path, shards: int) -> dict[str, Any]:
    resp = workdir / "shards.resp"
    t = time.perf_counter()
    made = write_pipe_protocol(parquet, resp, shards)
    made["generate_s"] = round(time.perf_counter() - t, 2)
    server = RedisServer(workdir / "pipe-redis").start()
    try:
        t = time.perf_counter()
        with resp.open("rb") as f:
            out = subprocess.run(["redis-cli", "-p", str(server.port), "--pipe"], stdin=f, capture_output=True,
                                 text=True, check=True)
        took = time.perf_counter() - t
        if "errors: 0" not in out.stdout:
            raise RuntimeError(f"redis-cli --pipe reported errors: {out.stdout[-500:]}")
    finally:
        server.stop()
        resp.unlink(missing_ok=True)
    return {**made, "shards": shards, "seconds": round(took, 2), "users_per_s": round(made["users"] / took)}


def anchor_outbox_write(workdir: Path, n: int = 1_000_000) -> dict[str, Any]:
    """Messages/s of the bare outbox format: one JSON line per message of the engine's shape."""
    from c2b.channels.base import Message

    msgs = [Message(f"{i:032x}", "e2e_outbox", "manual__2026-01-01T00:00:00+00:00", "hello", "outbox",
                    str(1_000_000_000 + i), "all", f"Hi user{i}, a new quote is waiting for you.", {}, None)
            for i in range(100_000)]
    path = workdir / "outbox-anchor.jsonl"
    t = time.perf_counter()
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n // len(msgs)):
            f.write("".join(json.dumps(m.to_json(), ensure_ascii=False) + "\n" for m in msgs))
    took = time.perf_counter() - t
    size = path.stat().st_size
    path.unlink()
    return {"messages": n, "seconds": round(took, 2), "messages_per_s": round(n / took),
            "bytes_per_message": round(size / n)}


# --- main -----------------------------------------------------------------------------------------------

def start_stack(executor: str, base: Path, name: str, dags: Path, extra: dict[str, str],
                concurrency: int) -> tuple[AirflowStack, dict[str, Any]]:
    home = base / name
    port = free_port()
    env = {**base_env(home=home, dags=dags, port=port, executor=executor), **extra}
    info: dict[str, Any] = {"executor": executor}
    if executor == CELERY:
        database = f"c2b_airflow_e2e_{os.getpid()}"
        ensure_postgres_database(database, fresh=True)
        broker = RedisServer(base / f"{name}-broker").start()
        env.update(celery_settings(sql_alchemy_conn=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                                   broker_url=f"{broker.url}/0", api_url=f"http://127.0.0.1:{port}",
                                   secret="e2e-bench-secret", worker_concurrency=concurrency))
        env.update(FAST_FAILURE_DETECTION)
        # A big plan maps more deliver tasks than the workers have slots: the later ones wait in
        # the broker (state queued) for a whole wave of shards, far beyond the stack's 180 s.
        env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] = extra.get("AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT", "180")
        info.update(database=database, broker=broker, worker_concurrency=concurrency)
    stack = AirflowStack(home, env, executor)
    t = time.perf_counter()
    stack.start(timeout=300)
    info["start_s"] = round(time.perf_counter() - t, 1)
    create_pools(stack)
    return stack, info


def stop_stack(stack: AirflowStack, info: dict[str, Any]) -> None:
    stack.stop()
    if "broker" in info:
        info.pop("broker").stop()
    if "database" in info:
        drop_postgres_database(info["database"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000, help="users of the big plans' warehouse")
    parser.add_argument("--only", choices=("all", "big", "demo"), default="all")
    parser.add_argument("--skip-http", action="store_true", help="skip the batch HTTP plan (b)")
    parser.add_argument("--skip-anchors", action="store_true")
    parser.add_argument("--worker-concurrency", type=int,
                        default=int(os.environ.get("C2B_WORKER_CONCURRENCY", "8")))
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("C2B_BENCH_CACHE",
                                                                           Path.home() / ".cache" / "c2b-bench")))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--shards-per-task", type=int, default=32,
                        help="the big plans' delivery.shards_per_task (default 32: 128 shards -> 4 tasks; at "
                             "10M on 2 cores 4 tasks took 247 s, 8 tasks 264 s, 16 tasks 315 s, 2 tasks 263 s: "
                             "bench/results/e2e.md)")
    parser.add_argument("--page-size", type=int, default=4000,
                        help="the big plans' delivery.page_size (4000: ~12%% less worker CPU than 1000 at 10M, "
                             "see docs/deployment.md)")
    parser.add_argument("--warm-baseline", action="store_true",
                        help="also run the demo on LocalExecutor with C2B_WARM_IMPORTS=off (the same-run baseline)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other parts of an existing result file (measure --only demo after big)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (stack logs) at the end")
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # stop the stacks and servers on `kill` too

    from devtools.gateway import GatewayProcess
    from devtools.postgres import ensure_running

    result: dict[str, Any] = {"users": args.users, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                              "started": datetime.now(UTC).isoformat(timespec="seconds"),
                              "worker_concurrency": args.worker_concurrency,
                              "big_plan_delivery": {"shards_per_task": args.shards_per_task,
                                                    "page_size": args.page_size},
                              "goals": {"big_s": GOAL_BIG_S, "rss_mib": GOAL_RSS_MIB, "demo_s": GOAL_DEMO_S}}
    def save() -> None:  # after every run too: a long measurement cut short keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        try:
            args.out.with_suffix(".md").write_text(render(result))
        except Exception as exc:  # noqa: BLE001 - the JSON holds the figures
            print(f"could not render the report yet: {exc!r}")

    if args.merge and args.out.with_suffix(".json").exists():  # e.g. the demo part measured after the big one
        kept = json.loads(args.out.with_suffix(".json").read_text())
        result = {**kept, **{k: v for k, v in result.items() if k not in ("users",)},
                  "runs": [*kept.get("runs", [kept.get("started")]), result["started"]]}
        result["users"] = kept.get("users", args.users)

    base = Path(tempfile.mkdtemp(prefix="c2b-e2e-"))
    link = base / "warehouse.duckdb"
    dags, data = base / "dags", base / "c2b"
    make_dags(dags, args.users, args.shards_per_task, args.page_size)
    ensure_running()
    audience = RedisServer(base / "audience").start()
    gateway = None
    try:
        with RssWatch() as rss:
            rss.watch("audience-redis", _redis_pid(audience))
            if args.only in ("all", "demo"):
                demo_wh, built = warehouse(DEMO_USERS, args.cache)
                result["demo_warehouse_build_s"] = built
                point(link, demo_wh)
                result["demo"] = {}
                # The baseline of the same run: task processes that import the engine themselves.
                arms = [(LOCAL, "off")] if args.warm_baseline else []
                for executor, warm in [*arms, (LOCAL, "on"), (CELERY, "on")]:
                    label = executor if warm == "on" else f"{executor}, C2B_WARM_IMPORTS=off"
                    print(f"demo plan on {label} ...", flush=True)
                    env = stack_env(base / f"demo-{executor}", dags, data, audience, link, None)
                    env["C2B_WARM_IMPORTS"] = warm
                    stack, info = start_stack(executor, base, f"demo-{executor}-{warm}", dags, env,
                                              args.worker_concurrency)
                    try:
                        for name, pid in stack.pids.items():
                            rss.watch(name, pid)
                        flush(audience, data)
                        run = run_plan(stack, DEMO_PLAN, rss, 600)
                        run["stack_start_s"] = info["start_s"]
                        result["demo"][label] = run
                        save()
                    finally:
                        stop_stack(stack, info)
                        for name in list(rss.roots):
                            if name not in ("audience-redis",):
                                rss.roots.pop(name)
            if args.only in ("all", "big"):
                big_wh, built = warehouse(args.users, args.cache)
                result["warehouse_build_s"] = built
                point(link, big_wh)
                if not args.skip_anchors:
                    print("anchors ...", flush=True)
                    parquet = base / "segment.parquet"
                    result.pop("anchors_from", None)  # measured by this run (a merged result may name another)
                    result["anchors"] = {"duckdb_copy": anchor_duckdb_copy(big_wh, parquet)}
                    shards = _auto_shards(parquet)
                    result["anchors"]["redis_pipe"] = anchor_redis_pipe(parquet, base, shards)
                    result["anchors"]["outbox_write"] = anchor_outbox_write(base)
                    parquet.unlink()
                    print("  " + json.dumps(result["anchors"]), flush=True)
                    save()
                gateway = None if args.skip_http else GatewayProcess(base, count_only=True)
                if gateway:
                    rss.watch("gateway", gateway.proc.pid)
                env = stack_env(base / "big", dags, data, audience, link, gateway.base if gateway else None)
                env["AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT"] = str(int(args.timeout) + 600)
                stack, info = start_stack(CELERY, base, "big", dags, env, args.worker_concurrency)
                result["big"] = {"stack_start_s": info["start_s"]}
                try:
                    result["big"]["warmup_s"] = warm_up(stack)
                    for name, pid in stack.pids.items():
                        rss.watch(name, pid)
                    for dag_id in ("e2e_outbox", *(() if args.skip_http else ("e2e_http",))):
                        print(f"{dag_id} on {CELERY} ({args.users:,} users) ...", flush=True)
                        flush(audience, data)
                        empty = empty_used_memory(audience)
                        run = run_plan(stack, dag_id, rss, args.timeout, audience)
                        run["redis_left"] = flush(audience, data, measure=True)
                        run["redis_left"]["used_memory_empty_bytes"] = empty
                        if dag_id == "e2e_http" and gateway:
                            run["gateway"] = gateway.stats()
                            gateway.reset()
                        result["big"][dag_id] = run
                        save()
                        shutil.rmtree(data / "outbox", ignore_errors=True)
                finally:
                    stop_stack(stack, info)
    finally:
        if gateway:
            gateway.stop()
        audience.stop()
        result["load_after"] = os.getloadavg()
        result["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
        if args.keep:
            print(f"work folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    save()
    print(render(result))
    return 0


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _redis_pid(server: RedisServer) -> int:
    return int(server.client().info("server")["process_id"])


def _auto_shards(parquet: Path) -> int:
    """The shard count ``shards: auto`` picks for this audience (the loader's own sizing)."""
    import numpy as np
    import pyarrow.parquet as pq
    from c2b.hashing import MAX_SHARDS, murmur3_32_arrow, shard_of_hashes
    from c2b.store.shards import DEFAULT_MAX_SHARD_MEMBERS
    from c2b.store.sizing import choose_shard_count

    hist = np.zeros(MAX_SHARDS, dtype=np.int64)
    with pq.ParquetFile(parquet) as pf:
        for batch in pf.iter_batches(batch_size=1 << 20, columns=["uid"]):
            idx = np.asarray(shard_of_hashes(murmur3_32_arrow(batch.column(0).cast("string")), MAX_SHARDS))
            hist += np.bincount(idx - 1, minlength=MAX_SHARDS)
    return choose_shard_count(hist, "auto", DEFAULT_MAX_SHARD_MEMBERS)


# --- the report -----------------------------------------------------------------------------------------

def _run_rows(run: dict[str, Any]) -> list[str]:
    rows = []
    for task in STAGES:
        s = run["stages"].get(task)
        if s:
            rows.append(f"| {task} | {s['tasks']} | {s['wall_s']} | {s['task_s_min']} / {s['task_s_median']} / "
                        f"{s['task_s_max']} | {', '.join(s['hosts'])} |")
    return rows


def _rss_rows(rss: dict[str, Any]) -> list[str]:
    return [f"| {name} | {c['root_mib']} | {c['child_max_mib']} ({c['children']}) | {c.get('cpu_s', '')} | "
            f"{c['child_cmd']} |" for name, c in rss.items()]


def render(r: dict[str, Any]) -> str:
    la = r.get("load_before")
    lines = ["# End to end on the live Airflow stacks (bench/e2e.py)", "",
             f"Measured {r['started']} on {r['cpus']} cores; load average before {la[0]:.2f} / {la[1]:.2f} / "
             f"{la[2]:.2f}, after {r.get('load_after', os.getloadavg())[0]:.2f} (the machine is shared with "
             f"other sessions: figures are what this run saw). Celery worker concurrency "
             f"{r['worker_concurrency']}; the big plans' delivery settings: {r.get('big_plan_delivery', 'defaults')}.",
             ""]
    if r.get("notes"):
        lines += ["## Reading these figures", "", *[f"- {n}" for n in r["notes"]], ""]
    if "big" in r:
        lines += [f"## {r['users']:,} users on the CeleryExecutor stack (2 workers)", "",
                  f"Goal: under {GOAL_BIG_S:.0f} s trigger to end, every process under {GOAL_RSS_MIB:.0f} MiB.", ""]
        if r["big"].get("warmup_s") is not None:
            lines += [f"The stack was started fresh ({r['big'].get('stack_start_s')} s) and warmed up by one trivial "
                      f"DAG run ({r['big']['warmup_s']} s trigger to end: a new api-server imports its task-execution "
                      "routes on the first call) before the measured runs.", ""]
        for dag_id in ("e2e_outbox", "e2e_http"):
            run = r["big"].get(dag_id)
            if not run:
                continue
            goal = "meets" if run["trigger_to_end_s"] < GOAL_BIG_S else \
                f"misses by {run['trigger_to_end_s'] - GOAL_BIG_S:.0f} s ({run['trigger_to_end_s'] / GOAL_BIG_S:.1f}x)"
            # "Every process": the audience redis-server counts too, not only Airflow's processes.
            redis_mib = (run["rss"].get("audience-redis") or {}).get("root_mib", 0.0)
            rss_goal = "meets" if max(run["max_stack_rss_mib"], redis_mib) < GOAL_RSS_MIB else "misses"
            lines += [f"### {dag_id}: {run['state']}, {run['trigger_to_end_s']} s trigger to end ({goal} the goal)",
                      "",
                      f"{run['sent']:,} messages sent, {run['messages_per_s'] or 0:,} messages/s over the deliver "
                      f"stage; load average at the end {run['load_at_end'][0]} (1 min), "
                      f"{run['load_at_end'][2]} (15 min); first task started {run['queued_to_first_task_s']} s "
                      "after the trigger; largest "
                      f"Airflow process {run['max_stack_rss_mib']} MiB, audience redis-server peak "
                      f"{redis_mib:,.1f} MiB "
                      f"(every process under 1 GiB: {rss_goal}); audience Redis "
                      f"held {run['redis_left']['used_memory_mib']} MiB in {run['redis_left']['keys']} keys "
                      "after the run.", "",
                      *left_behind(run["redis_left"], (run.get("audience") or {}).get("kept") or run["sent"]),
                      "| stage | tasks | wall s | task s min / median / max | workers |", "|---|---|---|---|---|",
                      *_run_rows(run), "",
                      f"CPU time used by the stack's processes during the run: {run.get('cpu_s_total', '?')} s "
                      f"(audience Redis included); on 2 idle cores that is at least "
                      f"{(run.get('cpu_s_total') or 0) / 2:.0f} s of wall time.", "",
                      "| process | peak RSS MiB | largest child MiB (children seen) | CPU s (all its processes) | "
                      "child |", "|---|---|---|---|---|",
                      *_rss_rows(run["rss"]), ""]
            if run.get("gateway"):
                g = run["gateway"]
                lines += [f"Gateway: {g.get('requests'):,} requests, {g.get('messages'):,} messages.", ""]
    if "anchors" in r:
        a = r["anchors"]
        # A run with --skip-anchors merged into an earlier result keeps that result's anchors: say whose.
        lines += [f"## Anchors ({r.get('anchors_from') or 'same run, same machine'})", "",
                  "| anchor | what | seconds | rate |", "|---|---|---|---|",
                  f"| DuckDB COPY | the segment ({a['duckdb_copy']['rows']:,} rows) to Parquet | "
                  f"{a['duckdb_copy']['seconds']:.2f} | {a['duckdb_copy']['rows_per_s']:,} rows/s |",
                  f"| `redis-cli --pipe` | packed uids + nickname hashes, {a['redis_pipe']['shards']} shards, "
                  f"{a['redis_pipe']['commands']:,} commands, {a['redis_pipe']['bytes'] / 2**20:,.0f} MiB "
                  f"(generating it took {a['redis_pipe']['generate_s']} s, not counted) | "
                  f"{a['redis_pipe']['seconds']} | {a['redis_pipe']['users_per_s']:,} users/s |",
                  f"| outbox format | `json.dumps` line per message, appended, one process "
                  f"({a['outbox_write']['bytes_per_message']} bytes a line) | {a['outbox_write']['seconds']} | "
                  f"{a['outbox_write']['messages_per_s']:,} messages/s |", ""]
    if "demo" in r:
        lines += [f"## The demo plan ({DEMO_PLAN}, {DEMO_USERS:,}-user warehouse)", "",
                  f"Goal: under {GOAL_DEMO_S:.0f} s trigger to end on both executors.", ""]
        for executor, run in r["demo"].items():
            aud = run.get("audience") or {}
            lines += [f"### {executor}: {run['state']}, {run['trigger_to_end_s']} s trigger to end "
                      f"({'meets' if run['trigger_to_end_s'] < GOAL_DEMO_S else 'misses'} the goal)", "",
                      f"{aud.get('rows', '?')} rows, {run['sent']:,} sent; load average at the end "
                      f"{run['load_at_end'][0]} (1 min); first task started "
                      f"{run['queued_to_first_task_s']} s after the trigger; largest stack process "
                      f"{run['max_stack_rss_mib']} MiB.", "",
                      "| stage | tasks | wall s | task s min / median / max | workers |", "|---|---|---|---|---|",
                      *_run_rows(run), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
