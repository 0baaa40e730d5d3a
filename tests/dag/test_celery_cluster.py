"""Under a real Airflow on CeleryExecutor: the stack of ``make cluster`` (devtools/airflow_stack.py),
two ``airflow celery worker`` processes, the metadata DB in PostgreSQL, Redis as the broker, and the
audience store on a real 3-node Redis Cluster.

- A 16-shard plan triggered through the REST API runs its shards at the same time on both workers.
- kill -9 of one worker (with every process it forked) while it runs shards: the scheduler sees
  their heartbeats stop, Airflow retries them on the other worker, and the run completes. A gateway
  that counts every request sees every message, with repeats only for users of the killed shards
  and no more than their prepared pages; a gateway that honours ``Idempotency-Key`` sees each
  message exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.airflow_stack import (
    CELERY,
    FAST_FAILURE_DETECTION,
    FAST_PARSING,
    AirflowStack,
    base_env,
    celery_settings,
    drop_postgres_database,
    ensure_postgres_database,
    free_port,
    wait_for,
)
from devtools.gateway import Faults, Gateway
from devtools.servers import RedisClusterServers, RedisServer

ROOT = Path(__file__).resolve().parents[2]
SHARDS, PAGE_SIZE, IN_FLIGHT, LATENCY_S = 16, 10, 4, 0.25
PLAN = f"""\
id: celery_two_gateways
description: Two HTTP touches per user, one to a gateway that counts every request, one to a gateway that dedupes.
schedule: null
audience:
  segment: cancelled_for_reason.sql
  params: {{reason: price_too_low, days: 30}}
touches:
  - name: counted
    channel: push
    connection: c2b_count_every_request
    template: "Hi {{{{ nickname }}}}"
  - name: deduped
    channel: push
    connection: c2b_honour_idempotency_key
    template: "Hi again {{{{ nickname }}}}"
reentry: {{after_days: 0}}  # both tests run this plan for the same users
delivery:
  shards: {SHARDS}
  page_size: {PAGE_SIZE}
  concurrency: {IN_FLIGHT}
  retries: 2
  retry_delay_seconds: 1
"""
DAG_ID = "celery_two_gateways"


def _http_conn(gateway: Gateway) -> str:
    host, port = gateway.server.server_address[:2]
    return json.dumps({"conn_type": "http", "host": host, "port": port, "schema": "send", "extra": {"timeout": 5}})


class CeleryCluster:
    def __init__(self, stack: AirflowStack, counting: Gateway, deduping: Gateway, data: Path,
                 audience: RedisClusterServers) -> None:
        self.stack, self.counting, self.deduping, self.data, self.audience = stack, counting, deduping, data, audience

    def run_plan(self, during=None, timeout: float = 300) -> tuple[str, str, list[dict[str, Any]]]:
        """Trigger the plan through the REST API; call ``during(run_id)`` while it runs; wait for the end."""
        self.counting.reset()
        self.deduping.reset()
        run_id = self.stack.trigger(DAG_ID)
        if during:
            during(run_id)
        state = self.stack.wait_for_run(DAG_ID, run_id, timeout)
        return run_id, state, self.stack.task_instances(DAG_ID, run_id)

    def audience_uids(self, run_id: str) -> set[str]:
        """The run's audience as its delivery log holds it (the staging file is gone after cleanup)."""
        from c2b.results.store import DuckDBResultsStore

        users = {str(row[0]) for row in DuckDBResultsStore(self.data / "results.duckdb").log_users(DAG_ID, run_id)}
        assert users, f"no delivery log rows for {run_id}"
        return users


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_warehouse: Path) -> Iterator[CeleryCluster]:
    from devtools.postgres import ensure_running

    ensure_running()
    base = tmp_path_factory.mktemp("celery")
    home, dags, data = base / "home", base / "dags", base / "c2b"
    (dags / "plans").mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", dags)
    (dags / "plans" / f"{DAG_ID}.yaml").write_text(PLAN)
    database = f"c2b_airflow_test_{os.getpid()}"
    ensure_postgres_database(database, fresh=True)
    broker = RedisServer(base / "broker").start()
    audience = RedisClusterServers(base / "audience").start()
    # A quarter second per request, IN_FLIGHT at a time: a shard sends for several seconds, long
    # enough to be killed mid-send with requests in flight.
    counting = Gateway(Faults(median_latency_s=LATENCY_S, dedupe=False))
    deduping = Gateway(Faults(median_latency_s=LATENCY_S))
    port = free_port()
    env = {**base_env(home=home, dags=dags, port=port, executor=CELERY),
           **celery_settings(sql_alchemy_conn=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                             broker_url=f"{broker.url}/0", api_url=f"http://127.0.0.1:{port}",
                             secret="celery-test-secret", worker_concurrency=4),
           **FAST_FAILURE_DETECTION, **FAST_PARSING,
           "AIRFLOW_CONN_C2B_REDIS": audience.airflow_conn(),
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(demo_warehouse)}),
           "AIRFLOW_CONN_C2B_COUNT_EVERY_REQUEST": _http_conn(counting),
           "AIRFLOW_CONN_C2B_HONOUR_IDEMPOTENCY_KEY": _http_conn(deduping),
           "C2B_DATA_DIR": str(data)}
    stack = AirflowStack(home, env, CELERY)
    try:
        with counting, deduping:
            started = time.monotonic()
            stack.start(timeout=240)
            stack.wait_for_dag(DAG_ID)
            print(f"\nCelery stack up and the plan loaded in {time.monotonic() - started:.1f} s")
            yield CeleryCluster(stack, counting, deduping, data, audience)
    finally:
        stack.stop()
        audience.stop()
        broker.stop()
        drop_postgres_database(database)


def _interval(ti: dict[str, Any]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(ti["start_date"]), datetime.fromisoformat(ti["end_date"])


def _delivers(tis: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in tis if t["task_id"] == "deliver"]


def test_a_16_shard_plan_runs_its_shards_at_once_on_both_workers(cluster: CeleryCluster) -> None:
    started = time.monotonic()
    run_id, state, tis = cluster.run_plan()
    print(f"16-shard run: {time.monotonic() - started:.1f} s from trigger to end")
    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    shards = _delivers(tis)
    assert len(shards) == SHARDS and {t["state"] for t in shards} == {"success"}

    # Both workers ran shards, each shard in a task process of its own.
    assert {t["hostname"] for t in shards} == {"worker-1", "worker-2"}, [t["hostname"] for t in shards]
    assert len({(t["hostname"], t["pid"]) for t in shards}) == SHARDS
    # Shards overlapped in time, across the two workers too.
    overlapping = [(a["map_index"], b["map_index"]) for a in shards for b in shards
                   if a["hostname"] < b["hostname"] and _interval(a)[0] < _interval(b)[1]
                   and _interval(b)[0] < _interval(a)[1]]
    assert overlapping, [(t["hostname"], t["start_date"], t["end_date"]) for t in shards]

    # No worker was killed: both gateways saw every message exactly once.
    users = cluster.audience_uids(run_id)
    for gateway, touch in ((cluster.counting, "counted"), (cluster.deduping, "deduped")):
        rec = gateway.record
        assert {m["uid"] for m in rec.accepted.values()} == users and {m["touch"] for m in rec.accepted.values()} == {
            touch}
        assert rec.duplicates == 0 and not rec.replays and rec.messages == len(users)


def test_kill_minus_9_of_a_worker_retries_its_shards_on_the_other_worker(cluster: CeleryCluster) -> None:
    from c2b.hashing import shard_index

    stack = cluster.stack
    killed: dict[str, Any] = {}

    def kill_a_worker_mid_shard(run_id: str) -> None:
        def running_shards() -> list[dict[str, Any]]:
            if cluster.counting.record.messages < 100:
                return []
            return [t for t in _delivers(stack.task_instances(DAG_ID, run_id)) if t["state"] == "running"]

        running = wait_for("shards sending on a worker", running_shards, timeout=240, every=0.2)
        victim = running[0]["hostname"]
        stack.kill(victim)
        killed.update(at=time.monotonic(), worker=victim, messages=cluster.counting.record.messages,
                      running={t["map_index"] for t in running if t["hostname"] == victim})

    try:
        run_id, state, tis = cluster.run_plan(during=kill_a_worker_mid_shard, timeout=360)
        print(f"kill -9 of {killed['worker']} after {killed['messages']} messages, running shards (map index) "
              f"{sorted(killed['running'])}; run ended {time.monotonic() - killed['at']:.1f} s after the kill")
    finally:
        if "worker" in killed:
            stack.start_component(killed["worker"])  # leave the module's stack whole
    assert state == "success", [(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis]
    survivor = ({"worker-1", "worker-2"} - {killed["worker"]}).pop()
    shards = {t["map_index"]: t for t in _delivers(tis)}
    retried = {i for i, t in shards.items() if t["try_number"] > 1}
    # Only shards that were running on the killed worker were retried (all of them, but for one that
    # ended in the instant between the look and the kill), each on the other worker.
    assert retried and retried <= killed["running"], (retried, killed["running"])
    assert all(shards[i]["state"] == "success" and shards[i]["hostname"] == survivor for i in retried)
    assert all(t["try_number"] == 1 for t in tis if t["task_id"] != "deliver")

    users = cluster.audience_uids(run_id)
    killed_indexes = {int(shards[i]["rendered_map_index"].removeprefix("shard ")) for i in retried}
    killed_users = {u for u in users if shard_index(u, SHARDS) in killed_indexes}
    # The counting gateway saw every message; the repeats are users of the killed shards only, and
    # no more than the pages those shards had prepared (the page being sent and the one read ahead).
    rec = cluster.counting.record
    assert {m["uid"] for m in rec.accepted.values()} == users
    repeated = {rec.accepted[k]["uid"] for k, n in rec.accepted_count.items() if n > 1}
    assert repeated <= killed_users, repeated - killed_users
    assert rec.duplicates <= len(retried) * 2 * PAGE_SIZE, rec.duplicates
    print(f"counting gateway: {rec.messages} messages for {len(users)} users, {rec.duplicates} repeats")
    # The gateway that honours Idempotency-Key accepted each message once.
    rec = cluster.deduping.record
    assert {m["uid"] for m in rec.accepted.values()} == users
    assert rec.duplicates == 0 and all(n == 1 for n in rec.accepted_count.values())
    print(f"deduping gateway: {rec.messages} messages, {len(rec.accepted)} accepted, "
          f"{sum(rec.replays.values())} replays answered as duplicates")
