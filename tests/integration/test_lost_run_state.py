"""A wiped Redis must fail the deliver task loudly, never read as an empty audience (issue #11.1).

A real redis-server *without* persistence is restarted in the middle of a shard's delivery, through
the Airflow edge of the deliver task (``c2b.airflow.resources.deliver_shard``, real connections
from ``AIRFLOW_CONN_*``, a real HTTP gateway): the task must fail without retries, saying that no
retry can fix lost state and what to do, and the run report must not say ``complete``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from devtools.deliverkit import load_audience, make_plan, plan_dict
from devtools.gateway import Faults, Gateway
from devtools.servers import RedisServer


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


@pytest.fixture
def volatile_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis-volatile", appendonly=False).start()
    yield server
    server.stop()


def _point_airflow_at(monkeypatch: pytest.MonkeyPatch, server: RedisServer, gw: Gateway, tmp_path: Path) -> None:
    host, port = gw.server.server_address[:2]
    monkeypatch.setenv("AIRFLOW_CONN_C2B_REDIS", f"{server.url}/?db=0")
    monkeypatch.setenv("AIRFLOW_CONN_C2B_PUSH", json.dumps(
        {"conn_type": "http", "host": host, "port": port, "schema": "push", "password": "tok",
         "extra": {"timeout": 5}}))
    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))


@pytest.mark.timeout(120)
def test_redis_restart_without_persistence_fails_the_task_and_the_report_is_not_complete(
        volatile_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException
    from c2b.airflow.resources import deliver_shard
    from c2b.results.report import summarize

    users = [f"w{i:05d}" for i in range(1200)]
    plan = make_plan(plan_dict("p_wiped", page_size=50, concurrency=4))
    loaded = load_audience(volatile_redis.client(), plan, "r1", users, tmp_path / "staging")
    outcome: dict[str, object] = {}

    def deliver() -> None:
        try:
            outcome["stats"] = deliver_shard(plan, "r1", 1, {})
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    with Gateway(Faults(median_latency_s=0.01, latency_sigma=0.1)) as gw:
        _point_airflow_at(monkeypatch, volatile_redis, gw, tmp_path)
        worker = threading.Thread(target=deliver)
        worker.start()
        _wait_for(lambda: gw.record.messages >= len(users) // 4 or not worker.is_alive())
        assert worker.is_alive(), f"delivery ended before the restart: {outcome}"
        volatile_redis.restart(down_for=0.3)
        worker.join(90)
        sent = len(gw.record.accepted)
    assert sent < len(users), "the restart came too late to lose anything"
    error = outcome.get("error")
    assert isinstance(error, AirflowFailException), f"the task did not fail: {outcome.get('stats') or error!r}"
    text = str(error)
    assert "run state lost" in text and "No retry can fix lost state" in text and "Re-run the plan" in text
    # The report of this run: the shard delivered nothing it could vouch for, so never "complete".
    extract = {"counts": {"kept": len(users)}, "path": "staging.parquet"}
    stats = [outcome["stats"]] if "stats" in outcome else []
    summary = summarize(plan.id, "r1", extract, stats, sorted(s for s, n in loaded.items() if n))
    assert summary["status"] != "complete" and summary["shards"]["incomplete"] == [1]


def test_a_shard_with_no_keys_fails_before_sending(redis_client, tmp_path: Path) -> None:
    """Never loaded, expired or cleaned up: the same error, and not one message sent."""
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.store.run_meta import RunStateLost

    plan = make_plan(plan_dict("p_never", page_size=50))
    with Gateway() as gw:
        channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, conn_id="t")) for t in plan.touches}
        with pytest.raises(RunStateLost, match="meta key is missing"):
            steps.step_deliver(plan, "r1", 1, redis_client, channels, lambda: False)
        assert gw.record.requests == 0


def test_a_shard_that_paged_fewer_users_than_loaded_is_not_complete() -> None:
    from c2b.results.report import summarize

    extract = {"counts": {"kept": 100}, "path": "x"}
    base = {"shard": 1, "stopped": False, "counts": {"all|t0|sent": 40}, "failures": {}}
    short = summarize("p", "r", extract, [{**base, "users": 40, "loaded": 100}], [1])
    assert short["status"] == "incomplete" and short["shards"]["incomplete"] == [1]
    whole = summarize("p", "r", extract, [{**base, "users": 100, "loaded": 100}], [1])
    assert whole["status"] == "complete"
