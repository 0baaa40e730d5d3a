"""The shard store and a whole plan run on a real 3-node Redis Cluster (RedisHook ``cluster: true``).

The cluster is three ``redis-server --cluster-enabled yes`` processes on loopback, joined with
``redis-cli --cluster create``; started once for this module and stopped after it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import redis.cluster
from c2b.store.shards import (
    AttrReader,
    ShardKeys,
    drop_run,
    inspect_run,
    load_shards,
    read_attrs,
    read_layout,
    read_page,
)
from store_cases import assert_resume, assert_round_trip, staging

from devtools.servers import RedisClusterServers

ROOT = Path(__file__).resolve().parents[2]
INTS = [str(i) for i in range(5_000_000, 5_012_000)]
TEXTS = [f"user-{i}" for i in range(12_000)]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch):
    """A RedisCluster client built by ``c2b.airflow.resources.get_redis()`` from a ``cluster: true`` connection."""
    from c2b.airflow.resources import get_redis
    from redis.cluster import RedisCluster

    redis_cluster.flush()
    monkeypatch.setenv("AIRFLOW_CONN_C2B_REDIS", redis_cluster.airflow_conn())
    client = get_redis()
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


def _keys_per_node(cluster: RedisClusterServers) -> list[list[str]]:
    return [[k.decode() for k in redis.Redis(port=p).scan_iter("c2b:*")] for p in cluster.ports]


@pytest.mark.parametrize(("uids", "encoding", "expect"), [(INTS, "auto", "packed"), (INTS, "zset", "zset"),
                                                          (TEXTS, "auto", "zset")])
def test_round_trip_on_cluster(cluster_client, redis_cluster, tmp_path: Path, uids, encoding, expect) -> None:
    assert_round_trip(cluster_client, tmp_path, uids, encoding, expect)
    assert all(_keys_per_node(redis_cluster)), "shards spread over every node"
    slots = set()
    for s in range(1, 17):  # a shard's companion keys share one slot (one hash tag)
        keys = ShardKeys("plan_rt", "run-1", s)
        shard_slots = {cluster_client.keyslot(k) for k in [*keys.run_scoped(attr_chunks=64), keys.ledger]}
        assert len(shard_slots) == 1
        slots |= shard_slots
    assert len(slots) == 16, "every shard on its own slot"


@pytest.mark.parametrize("encoding", ["packed", "zset"])
def test_resume_on_cluster(cluster_client, tmp_path: Path, encoding: str) -> None:
    assert_resume(cluster_client, tmp_path, INTS[:4000], encoding)


def test_ttls_check_and_cleanup_on_cluster(cluster_client, redis_cluster, tmp_path: Path) -> None:
    path = staging(tmp_path / "c.parquet", INTS, nickname=["n"] * len(INTS))
    result = load_shards(cluster_client, path, "plan_c", "run-1", "auto", attr_columns=["nickname"],
                         max_shard_members=1000, ttl_seconds=600, attr_chunk=200)
    assert result.shard_count == 16
    layout = read_layout(cluster_client, "plan_c", "run-1")
    assert layout["attr_chunk"] == 200  # ~750 a shard: 4 chunks each
    for s in (1, 16):  # the chunks share the shard's slot: one MGET of the chunks a page spans
        k = ShardKeys("plan_c", "run-1", s)
        page = read_page(cluster_client, k, 150, 300)
        assert len(page) == 300 and read_attrs(cluster_client, k, 150, 300, layout) == [{"nickname": "n"}] * 300
        assert AttrReader(cluster_client, k, layout).by_uid(page[::-1]) == [{"nickname": "n"}] * 300
    keys = [k for node in _keys_per_node(redis_cluster) for k in node]
    assert all(0 < cluster_client.ttl(k) <= 600 for k in keys)
    check = inspect_run(cluster_client, "plan_c", "run-1")
    assert check.problems == [] and len(check.keys) == len(keys)
    cluster_client.hset(ShardKeys("plan_c", "run-1", 1).ledger, "t|1", "s")
    assert drop_run(cluster_client, "plan_c", "run-1") == len(keys)
    assert [k for node in _keys_per_node(redis_cluster) for k in node] == [ShardKeys("plan_c", "run-1", 1).ledger]


def test_whole_plan_run_on_cluster(redis_cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                   demo_warehouse: Path) -> None:
    """extract -> load -> deliver[shards] -> report -> cleanup, all through the cluster connection."""
    from c2b.airflow.dag_factory import build_dags

    redis_cluster.flush()
    monkeypatch.setenv("AIRFLOW_CONN_C2B_REDIS", redis_cluster.airflow_conn())
    monkeypatch.setenv("AIRFLOW_CONN_C2B_WAREHOUSE", f'{{"conn_type": "duckdb", "host": "{demo_warehouse}"}}')
    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    dags, errors = build_dags(ROOT / "dags" / "plans", "cancelled_price_coupon")
    assert not errors
    dr = dags["cancelled_price_coupon"].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    # Every task succeeded on its first try: a retry that finds the shard already recorded would
    # hide a first attempt that failed half-way (it once did: contact records on the cluster).
    tries = {(ti.task_id, ti.map_index): (str(getattr(ti.state, "value", ti.state)), ti.try_number)
             for ti in dr.get_task_instances()}
    assert set(tries.values()) == {("success", 1)}, tries

    summary = json.loads(next((tmp_path / "c2b" / "reports").rglob("*.json")).read_text())
    files = list((tmp_path / "c2b" / "outbox").rglob("*.jsonl"))
    sent = Counter(json.loads(line)["uid"] for f in files for line in f.read_text().splitlines())
    assert summary["audience"]["kept"] > 100 and sent and max(sent.values()) == 1
    assert sum(sent.values()) == summary["outcomes"]["coupon|coupon_push|sent"]
    from c2b.delivery.contacts import contacted_since

    cluster = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    assert all(contacted_since(cluster, list(sent), datetime.now(UTC))), "every sent user is in the contact record"
    leftover = [k for node in _keys_per_node(redis_cluster) for k in node]
    # What outlives a run in Redis: the cross-plan records (contacts for exclusion, frequency-cap
    # counts), which belong to no run, the plan's re-entry history and its budget's counter. The
    # run's ledger and its budget's reservation sets went to its archive file.
    run_keys = [k for k in leftover if not k.startswith(("c2b:contacts:", "c2b:fcap:", "c2b:reentry:"))]
    assert len(run_keys) == 1 and run_keys[0].startswith("c2b:budget:") and run_keys[0].endswith(":n"), run_keys
    # A cleared run's load puts the ledger back, each key on its own slot's node.
    from c2b.delivery.ledger_archive import read_archive, restore_ledgers
    from c2b.settings import ledgers_dir

    archives = list(Path(str((ledgers_dir() / "cancelled_price_coupon").path)).glob("*.ledger"))
    assert len(archives) == 1
    archived = read_archive(archives[0])
    ledger_keys = re.compile(r":(ledgers?|stats|codes|pages|out:\d+|pg:\d+:\d+)$")
    budget_keys = [k.name for k in archived if k.name.startswith("c2b:budget:")]
    assert archived and all(ledger_keys.search(k.name) for k in archived if k.name not in budget_keys)
    assert budget_keys and len({cluster.keyslot(k) for k in budget_keys}) == 1, "a budget's keys share one slot"
    run_id = dr.run_id
    assert restore_ledgers(cluster, "cancelled_price_coupon", run_id) == len(archived)
    assert sorted(k for node in _keys_per_node(redis_cluster) for k in node if k not in leftover) == \
        sorted(k.name for k in archived)
    assert len({cluster.keyslot(k.name) for k in archived}) > 1, "the shards' ledgers live on several slots"


def test_a_plan_without_caps_counts_its_sends_on_cluster(cluster_client) -> None:
    from store_cases import assert_counting_without_caps

    assert_counting_without_caps(cluster_client)


def test_contact_and_reentry_writes_take_one_script_call_per_slot(cluster_client, redis_cluster) -> None:
    """On a cluster a script's keys must share a slot: a flush's buckets go one EVALSHA per slot,
    pipelined per node; a node that lost its scripts (NOSCRIPT) gets the body and the calls again."""
    from functools import partial

    from c2b.delivery.contacts import bucket_key as contacts_key
    from c2b.delivery.contacts import contacted_since, epoch_day, last_days, record_contacts
    from c2b.delivery.reentry import BUCKETS, bucket_key, record_sends, stored_users
    from c2b.hashing import shard_index
    from c2b.plan.load import parse_plan

    plan = parse_plan({"id": "cl_flush", "audience": {"segment": "all_users.sql"}, "reentry": "once",
                       "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}, "cl_flush.yaml")
    own = partial(bucket_key, plan.id)

    def slots(uids: list[str]) -> set[int]:
        buckets = {shard_index(u, BUCKETS) for u in uids}
        return {cluster_client.keyslot(key(b)) for b in buckets for key in (own, contacts_key)}

    nodes = [redis.Redis(port=p) for p in redis_cluster.ports]
    users = [str(7_000_000 + i) for i in range(200)] + ["user-x"]
    when = datetime(2026, 6, 15, 12, tzinfo=UTC)
    record = record_sends(plan, record_contacts)
    for node in nodes:
        node.script_flush()
        node.config_resetstat()
    record(cluster_client, users, when)
    record(cluster_client, users[:50], when.replace(day=1))  # older: the later day is kept
    stats = [n.info("commandstats") for n in nodes]
    assert not any("cmdstat_eval" in s for s in stats)
    assert sum(s.get("cmdstat_script|load", {}).get("calls", 0) for s in stats) == len(nodes)
    # One call per slot of each write's buckets; the first write's calls twice (NOSCRIPT, then again).
    calls = sum(s.get("cmdstat_evalsha", {}).get("calls", 0) for s in stats)
    assert calls == 2 * len(slots(users)) + len(slots(users[:50]))
    assert {cluster_client.keyslot(k) for n in nodes for k in n.scan_iter("c2b:*")} == slots(users)
    assert sum(stored_users(cluster_client, plan.id)) == len(users)
    assert last_days(cluster_client, users, legacy_of=None).tolist() == [epoch_day(when)] * len(users)
    assert last_days(cluster_client, users, key_of=own, buckets=BUCKETS,
                     legacy_of=None).tolist() == [epoch_day(when)] * len(users)
    assert all(contacted_since(cluster_client, users, when))
