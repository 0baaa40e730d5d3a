"""Repeats after a crash are bounded by what was in flight (#11 defect 3).

A gateway that counts every request (``dedupe=False``: it does not honour ``Idempotency-Key``)
shows what a retry sends again. Only a message whose send had started before the crash may reach
it twice, so after each kill -9 (at a random moment) or Redis outage the repeats must stay within
the in-flight window: ``concurrency`` requests of ``batch_size`` messages. A gateway that honours
the key must see (accept) each message exactly once. Each shard runs in its own process
(``devtools/deliverkit.py``), killed and retried the way an Airflow worker would be.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from devtools.deliverkit import expected_keys, ledger_entries, load_audience, make_plan, plan_dict, spec, start_shard
from devtools.gateway import Faults, Gateway
from devtools.servers import RedisServer

CONCURRENCY = 16


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.001)


def _finish(proc, timeout: float = 120.0) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"shard process exited {proc.returncode}"
    return json.loads(out.strip().splitlines()[-1])


def _repeats(gw: Gateway) -> int:
    """Messages the gateway received more than once (each extra receipt counts)."""
    return sum(n - 1 for n in gw.record.keys.values() if n > 1)


def _ledger_states(redis, plan, run_id: str, users: list[str]) -> set[str]:
    return set(ledger_entries(redis, plan, run_id, users).values())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("dedupe", [False, True], ids=["counting-gateway", "key-honouring-gateway"])
def test_kill_minus_9_repeats_at_most_the_in_flight_window(redis_server, redis_client, tmp_path: Path,
                                                           dedupe: bool) -> None:
    rng = random.Random(20261127 + dedupe)
    users = [f"k{i:05d}" for i in range(1500)]
    report = []
    with Gateway(Faults(median_latency_s=0.003, dedupe=dedupe)) as gw:
        for trial in range(6):
            batch = 1 if trial % 3 else 4
            window = CONCURRENCY * batch
            data = plan_dict(f"p_rep{int(dedupe)}{trial}", page_size=50, concurrency=CONCURRENCY)
            plan = make_plan(data)
            run_id = f"run{trial}"
            load_audience(redis_client, plan, run_id, users, tmp_path / "staging")
            want = expected_keys(plan, run_id, users)
            gw.reset()
            s = spec(redis_server.url, data, run_id, 1, gw.url, {"batch_size": batch, "timeout": 5})
            kills = 1 + trial % 2  # some trials crash twice: the first retry is killed too
            for k in range(kills):
                proc = start_shard(s, tmp_path / f"t{trial}", f"attempt{k}")
                kill_at = gw.record.messages + rng.randint(1, len(want) // (kills + 1))
                _wait_for(lambda n=kill_at, p=proc: gw.record.messages >= n or p.poll() is not None)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            _finish(start_shard(s, tmp_path / f"t{trial}", "last"))
            rec = gw.record
            assert set(rec.keys) == want, f"trial {trial}: lost {len(want - set(rec.keys))}"
            assert _ledger_states(redis_client, plan, run_id, users) == {"s"}
            repeats = _repeats(gw)
            report.append((trial, batch, kills, window, repeats))
            assert repeats <= kills * window, (trial, kills, window, repeats)
            if dedupe:
                assert set(rec.accepted) == want and set(rec.accepted_count.values()) == {1}
    print(f"\n{'counting' if not dedupe else 'key-honouring'} gateway, "
          "(trial, batch_size, crashes, in-flight window in messages, repeated receipts):", report)


@pytest.mark.timeout(300)
def test_redis_outage_with_fast_give_up_repeats_at_most_the_in_flight_window(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("C2B_REDIS_PATIENCE_S", "0.2")
    server = RedisServer(tmp_path / "redis-aof", appendonly=True).start()
    report = []
    try:
        client = server.client()
        users = [f"o{i:05d}" for i in range(2000)]
        with Gateway(Faults(median_latency_s=0.003, dedupe=False)) as gw:
            for trial in range(3):
                data = plan_dict(f"p_outage{trial}", page_size=50, concurrency=CONCURRENCY)
                plan = make_plan(data)
                load_audience(client, plan, "r1", users, tmp_path)
                want = expected_keys(plan, "r1", users)
                gw.reset()
                s = spec(server.url, data, "r1", 1, gw.url)
                proc = start_shard(s, tmp_path / f"t{trial}", "first")
                _wait_for(lambda p=proc, w=want: gw.record.messages >= len(w) // 3 or p.poll() is not None)
                server.restart(down_for=1.0)
                proc.communicate(timeout=90)
                failed = proc.returncode != 0
                if failed:
                    _finish(start_shard(s, tmp_path / f"t{trial}", "retry"))
                assert set(gw.record.keys) == want
                repeats = _repeats(gw)
                report.append((trial, failed, repeats))
                assert repeats <= CONCURRENCY, (trial, repeats)
        assert any(failed for _, failed, _ in report), "the short patience must fail at least one attempt"
    finally:
        server.stop()
    print(f"\nRedis outage, patience 0.2 s, {CONCURRENCY} in flight, (trial, attempt failed, repeats):", report)
