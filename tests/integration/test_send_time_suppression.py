"""Suppression is checked when a page is sent, not only at extract (#11.9); lists are sharded."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from devtools.deliverkit import make_plan, plan_dict
from devtools.gateway import Gateway


def test_a_user_suppressed_between_extract_and_send_is_not_sent(
        redis_client, redis_server, demo_warehouse: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from c2b import steps
    from c2b.audience.warehouse import DuckDBWarehouse
    from c2b.channels import ChannelConfig, make_channel
    from c2b.cli import main as cli
    from c2b.delivery.shard import idempotency_key

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    monkeypatch.setenv("C2B_REDIS_URL", redis_server.url)
    data = plan_dict("p_consent", shards=2)
    data["audience"] = {"segment": "all_users.sql", "exclude": [{"suppression_list": "vip"}]}
    plan = make_plan(data)
    extract = steps.step_extract(plan, "r1", DuckDBWarehouse(demo_warehouse), sample=400, redis=redis_client)
    shards = steps.step_load(plan, "r1", redis_client, extract)
    users = pq.read_table(extract["path"]).column("uid").to_pylist()
    # After the extract: one user is added to the plan's list, one opts out of everything.
    assert cli(["suppress", "add", "vip", str(users[3])]) == 0
    assert cli(["suppress", "add", "opt_outs", str(users[7])]) == 0
    with Gateway() as gw:
        stats = []
        for shard in shards:
            channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, conn_id="t")) for t in plan.touches}
            stats.append(steps.step_deliver(plan, "r1", shard, redis_client, channels, lambda: False))
        accepted = set(gw.record.accepted)
    gone = {idempotency_key(plan.id, "r1", "t0", str(u)) for u in (users[3], users[7])}
    assert not gone & accepted
    assert len(accepted) == len(users) - 2
    counts: dict[str, int] = {}
    for st in stats:
        for k, n in st["counts"].items():
            counts[k] = counts.get(k, 0) + n
    assert counts == {"all|t0|sent": len(users) - 2, "all|t0|suppressed": 2}
    capsys.readouterr()


def test_suppression_lists_are_sharded_and_old_lists_migrate(redis_client) -> None:
    from c2b.store import suppression

    uids = [str(10**9 + i) for i in range(20_000)]
    assert suppression.add(redis_client, "big", uids) == 20_000
    sizes = [redis_client.scard(suppression.bucket_key("big", b)) for b in range(1, suppression.BUCKETS + 1)]
    assert sum(sizes) == 20_000 and max(sizes) < 60  # ~20 per bucket, never one big key
    assert not redis_client.exists("c2b:suppression:big")
    assert suppression.suppressed(redis_client, ["big"], [uids[5], "stranger"]) == {uids[5]}
    # A list written the old way (one SET) is moved into buckets on first use.
    redis_client.sadd("c2b:suppression:legacy", "a", "b", "c")
    assert suppression.suppressed(redis_client, ["legacy"], ["b", "z"]) == {"b"}
    assert not redis_client.exists("c2b:suppression:legacy")
    assert sorted(suppression.members(redis_client, "legacy")) == ["a", "b", "c"]
