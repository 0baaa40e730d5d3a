"""Offer budgets are never overspent: 64 shards in 64 processes, a retried shard, lost replies,
a Redis restart (real redis-server, a real HTTP gateway that counts every request)."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.deliverkit import load_audience, make_plan, plan_dict
from devtools.gateway import Faults, Gateway
from devtools.servers import ReplyCuttingProxy

SHARDS = 64


def _budget_plan(plan_id: str, budget: dict, shards: int = SHARDS, amount: float = 10.0, **delivery) -> dict:
    data = plan_dict(plan_id, shards=shards, page_size=10, concurrency=4, **delivery)
    data["touches"][0]["offer"] = {"type": "price_up_coupon", "amount": amount, "budget": budget}
    return data


def _deliver(redis_url: str, data: dict, run_id: str, shard: int, url: str, start, out) -> None:
    """Body of one shard process: wait for the start signal, deliver, put the stats on ``out``."""
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.controls.kill_switch import KillSwitch

    client = redis.Redis.from_url(redis_url)
    plan = make_plan(data)
    channels = {t.name: make_channel(t.channel, ChannelConfig(url=url, conn_id=f"test_{t.channel}", redis=client))
                for t in plan.touches}
    start.wait(60)
    out.put(json.dumps(steps.step_deliver(plan, run_id, shard, client, channels, KillSwitch(client, plan.id))))


def _run_parallel(redis_url: str, data: dict, run_id: str, shards: list[int], url: str) -> list[dict]:
    ctx = multiprocessing.get_context("fork")  # the engine is imported once, in the parent
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_deliver, args=(redis_url, data, run_id, s, url, start, out)) for s in shards]
    for p in procs:
        p.start()
    start.set()  # every shard starts reserving at once
    stats = [json.loads(out.get(timeout=240)) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return stats


def _outcomes(stats: list[dict]) -> Counter:
    total: Counter = Counter()
    for st in stats:
        for key, n in st["counts"].items():
            total[key.rsplit("|", 1)[1]] += n
    return total


@pytest.mark.parametrize("budget, granted", [({"coupons": 700}, 700), ({"amount": 4321.5}, 432)],
                         ids=["coupons", "money"])
def test_64_shards_in_parallel_processes_never_overspend(redis_server, redis_client, tmp_path: Path,
                                                          budget: dict, granted: int, monkeypatch) -> None:
    data = _budget_plan(f"p_budget_{next(iter(budget))}", budget)
    plan = make_plan(data)
    users = [f"u{i:05d}" for i in range(3000)]
    loaded = load_audience(redis_client, plan, "run1", users, tmp_path / "staging")
    with Gateway(Faults(median_latency_s=0.002)) as gw:
        stats = _run_parallel(redis_server.url, data, "run1", sorted(loaded), gw.url)
        rec = gw.record
        assert len(loaded) == SHARDS
        # The gateway received exactly the budget's worth of offers: not one more, none twice.
        assert rec.messages == granted and len(rec.accepted) == granted and rec.duplicates == 0
    outcomes = _outcomes(stats)
    assert outcomes == {"sent": granted, "budget_exhausted": len(users) - granted}
    spent = redis_client.hgetall(f"c2b:budget:{{{plan.id}:t0:run1}}:n")
    assert int(spent[b"coupons"]) == granted and int(spent[b"cents"]) == granted * 1000
    # The run report says the budget ran out, and how many users it turned away.
    from c2b import steps

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    extract = {"path": "x", "counts": {"kept": len(users)}}
    summary = steps.step_report(plan, "run1", extract, sorted(loaded), stats, redis=redis_client)
    assert summary["budgets"]["t0"] | {"amount_cap": None, "coupons_cap": None} == {
        "coupons": granted, "amount": granted * 10.0, "per": "run", "budget_exhausted": len(users) - granted,
        "exhausted": True, "amount_cap": None, "coupons_cap": None}
    assert summary["per_touch"]["t0"] == {"sent": granted, "budget_exhausted": len(users) - granted}


def test_a_retried_shard_does_not_reserve_twice(redis_server, redis_client, tmp_path: Path) -> None:
    """A second attempt of every shard (e.g. a cleared task) sends nothing and takes no coupon."""
    data = _budget_plan("p_budget_retry", {"coupons": 50}, shards=4)
    plan = make_plan(data)
    users = [f"u{i:04d}" for i in range(200)]
    loaded = load_audience(redis_client, plan, "run1", users, tmp_path / "staging")
    with Gateway() as gw:
        _run_parallel(redis_server.url, data, "run1", sorted(loaded), gw.url)
        # Wipe the ledgers, as if each shard crashed after reserving but before its ledger write:
        # the retry must find the reservations and take nothing more.
        for key in redis_client.scan_iter(f"c2b:{{{plan.id}:run1:*}}:*"):
            if key.endswith((b":ledger", b":stats", b":ckpt", b":receipts", b":codes", b":pages")) \
                    or b":out:" in key or b":pg:" in key:
                redis_client.delete(key)
        stats = _run_parallel(redis_server.url, data, "run1", sorted(loaded), gw.url)
        # Same users re-reserved: the gateway sees the same 50 keys again (it honours them), no new one.
        assert len(gw.record.accepted) == 50 and gw.record.duplicates == 0
    assert int(redis_client.hget(f"c2b:budget:{{{plan.id}:t0:run1}}:n", "coupons")) == 50
    assert _outcomes(stats)["sent"] == 50


def _lose_reply(proxy, client, script) -> None:
    assert client.script_load(script.script) == script.sha
    proxy.cut_reply_to(b"EVALSHA\r\n$40\r\n" + script.sha.encode())


def test_reservation_replayed_after_a_lost_reply_is_taken_once(redis_server, redis_client) -> None:
    from c2b.delivery.controls.budget import OfferBudgets

    proxy = ReplyCuttingProxy(redis_server.port)
    try:
        client = redis.Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 0))
        plan = make_plan(_budget_plan("p_budget_lost", {"coupons": 5}, shards=1))
        budgets = OfferBudgets(client, plan, "r1")
        _lose_reply(proxy, redis_client, budgets._script)
        granted, left = budgets.reserve("t0", ["a", "b", "c"])
        assert proxy.cuts == 1  # the first run's answer was lost; with_redis_retry replayed it
        assert granted == [True, True, True] and left
        assert budgets.reserve("t0", ["c", "d", "e", "f"]) == ([True, True, True, False], False)
        assert int(redis_client.hget(f"c2b:budget:{{{plan.id}:t0:r1}}:n", "coupons")) == 5
    finally:
        proxy.close()


def test_redis_restart_during_reservations_neither_overspends_nor_loses(tmp_path: Path) -> None:
    """Shards keep reserving while Redis restarts (persisted with appendfsync always)."""
    import threading

    from devtools.servers import RedisServer

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        data = _budget_plan("p_budget_restart", {"coupons": 300}, shards=8)
        plan = make_plan(data)
        users = [f"u{i:04d}" for i in range(1000)]
        loaded = load_audience(server.client(), plan, "run1", users, tmp_path / "staging")
        with Gateway(Faults(median_latency_s=0.01)) as gw:
            bounce = threading.Timer(0.5, lambda: server.restart(down_for=1.0))
            bounce.start()
            stats = _run_parallel(server.url, data, "run1", sorted(loaded), gw.url)
            bounce.join()
            assert len(gw.record.accepted) == 300 and gw.record.duplicates == 0
        assert _outcomes(stats) == {"sent": 300, "budget_exhausted": 700}
        assert int(server.client().hget(f"c2b:budget:{{{plan.id}:t0:run1}}:n", "coupons")) == 300
    finally:
        server.stop()
