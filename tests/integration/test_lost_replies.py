"""A ledger or frequency-cap call whose reply is lost is replayed safely (real Redis behind a
reply-cutting proxy).

When Redis stops right after running a command (a SIGTERM shutdown persists the write, then exits
without sending the reply), the client cannot tell whether the command ran and sends it again:
redis-py's own retry does, and so does :func:`c2b.store.redis_retry.with_redis_retry`. The ledger's
``prepare`` is conditional ("only a new entry becomes pending"), so a naive replay answers "not
yours" for the entries the first run made pending, and the shard would skip sending them. A CI
run lost exactly one page that way; the frequency cap's counts would have been taken (or given
back) twice. These tests lose that reply on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools.deliverkit import expected_keys, ledger_entries, load_audience, make_plan, plan_dict, spec, start_shard
from devtools.gateway import Faults, Gateway
from devtools.servers import ReplyCuttingProxy


def _run_of(script) -> bytes:
    """The proxy's marker for a call that runs ``script`` (not redis-py's SCRIPT EXISTS check of
    it, which a pipeline sends first and which changes nothing)."""
    return b"EVALSHA\r\n$40\r\n" + script.sha.encode()


def _lose_reply_to(proxy, redis, script, skip: int = 0) -> None:
    """Arm the proxy for the ``skip + 1``-th run of ``script`` from now, loaded first: a NOSCRIPT
    answer that the proxy cut would change nothing, and the test would prove nothing."""
    assert redis.script_load(script.script) == script.sha
    proxy.cut_reply_to(_run_of(script), skip)


@pytest.fixture
def proxy(redis_server, redis_client):
    p = ReplyCuttingProxy(redis_server.port)
    yield p
    p.close()


def _client(url: str, client_retries: int) -> redis.Redis:
    return redis.Redis.from_url(url, retry=Retry(NoBackoff(), client_retries))


@pytest.mark.parametrize("client_retries", [3, 0], ids=["redis-py-replays", "with_redis_retry-replays"])
def test_prepare_replayed_after_a_lost_reply_returns_the_first_answer(redis_client, proxy, client_retries) -> None:
    from c2b.delivery.ledger import Change, ShardLedger
    from c2b.store.redis_retry import with_redis_retry
    from c2b.store.shards import ShardKeys

    ledger = ShardLedger(_client(proxy.url, client_retries), ShardKeys("p_replay", "r1", 1))
    fields = [f"t0|u{i}" for i in range(5)]
    changes = [Change(f, "p", "all|t0", "pending") for f in fields]
    _lose_reply_to(proxy, redis_client, ledger._prepare)
    receipt = ledger.new_receipt()

    applied = with_redis_retry(lambda: ledger.prepare(changes, receipt), patience=5)

    assert proxy.cuts == 1  # the first run's answer really was lost
    assert applied == [True] * 5
    assert ledger.states(fields) == ["p"] * 5
    # Another call (a racing attempt) still finds the entries taken: the receipt is per call.
    assert ledger.prepare(changes) == [False] * 5
    assert redis_client.hgetall(ledger.stats) == {b"#pending": b"5"}  # counted once, however often replayed


def test_deferred_move_replayed_after_a_lost_reply_counts_once(redis_client, proxy) -> None:
    from c2b.delivery.ledger import Change, ShardLedger
    from c2b.store.redis_retry import with_redis_retry
    from c2b.store.shards import ShardKeys

    ledger = ShardLedger(_client(proxy.url, 0), ShardKeys("p_replay", "r1", 1))
    changes = [Change(f"t0|u{i}", "d", "all|t0", "deferred", 2_000_000_000) for i in range(3)]
    _lose_reply_to(proxy, redis_client, ledger._prepare)
    receipt = ledger.new_receipt()
    assert with_redis_retry(lambda: ledger.prepare(changes, receipt), patience=5) == [True] * 3
    assert proxy.cuts == 1
    assert redis_client.hget(ledger.stats, "all|t0|deferred") == b"3"
    assert redis_client.hget(ledger.stats, "#deferred_total") == b"3"


def _script_of(redis, plan, which: str):
    from c2b.delivery.controls.frequency_cap import FrequencyCap
    from c2b.delivery.ledger import ShardLedger
    from c2b.store.shards import ShardKeys

    ledger = ShardLedger(redis, ShardKeys(plan.id, "r1", 1))
    # The main pass's scripts: its pages are decided and recorded by position (page records).
    script = {"page decision": ledger._page_prepare, "outcomes": ledger._page_finalize,
              "frequency counts": FrequencyCap(redis, None)._counter}[which]  # a plan without caps counts
    return script


@pytest.mark.parametrize("which", ["page decision", "outcomes", "frequency counts"])
def test_shard_whose_redis_reply_is_lost_still_sends_every_message_once_and_counts_it_once(
        redis_client, proxy, tmp_path: Path, which: str) -> None:
    """End to end: the shard process talks to Redis through the proxy, which loses the reply to
    the 4th call of one script (the page decision, the recorded outcomes, or the cross-plan
    frequency counts); the shard must still send all its messages, each once, and count each once."""
    users = [f"q{i:04d}" for i in range(600)]
    data = plan_dict("p_lost_reply", page_size=50, concurrency=8)
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", users, tmp_path)
    want = expected_keys(plan, "r1", users)
    _lose_reply_to(proxy, redis_client, _script_of(redis_client, plan, which), skip=3)
    with Gateway(Faults(median_latency_s=0.002)) as gw:
        proc = start_shard(spec(proxy.url, data, "r1", 1, gw.url), tmp_path)
        out, _ = proc.communicate(timeout=60)
        rec = gw.record
    assert proc.returncode == 0, (tmp_path / "shard.log").read_text()[-3000:]
    assert proxy.cuts == 1
    assert set(rec.accepted) == want, f"lost {len(want - set(rec.accepted))}"
    assert rec.duplicates == 0
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["counts"] == {"all|t0|sent": len(want)}
    assert not stats["attempt"].get("orphans"), "the replay was answered right; no sweep was needed"
    ledger = ledger_entries(redis_client, plan, "r1", users)
    assert len(ledger) == len(want) and set(ledger.values()) == {"s"}
    assert redis_client.hget(f"c2b:{{{plan.id}:r1:1}}:stats", "#pending") == b"0"
    counts = [int(v) for key in redis_client.scan_iter("c2b:fcap:*") if not key.endswith(b":rcpt")
              for v in redis_client.hvals(key)]
    assert len(counts) == len(users) and set(counts) == {1}, "every user counted once across plans"


@pytest.mark.parametrize("client_retries", [3, 0], ids=["redis-py-replays", "with_redis_retry-replays"])
def test_frequency_cap_take_replayed_after_a_lost_reply_counts_once(redis_client, proxy, client_retries) -> None:
    from c2b.delivery.controls.frequency_cap import FrequencyCap
    from c2b.store.redis_retry import with_redis_retry

    fcap = FrequencyCap(_client(proxy.url, client_retries), 2)
    wants = [("20261125", f"u{i}", 1 + i % 2) for i in range(40)]  # many buckets: one pipelined call
    _lose_reply_to(proxy, redis_client, fcap._script)
    receipt = fcap.new_receipt()

    granted = with_redis_retry(lambda: fcap.take(wants, receipt), patience=5)

    assert proxy.cuts == 1
    assert granted == {(d, u): n for d, u, n in wants}  # the first answer: everything fitted under 2
    assert [fcap.count(d, u) for d, u, _ in wants] == [n for _, _, n in wants]  # not twice
    # A new call is a new decision: the cap of 2 now refuses what would go over it.
    assert fcap.take([("20261125", "u1", 1), ("20261125", "u0", 1)]) == {("20261125", "u1"): 0,
                                                                      ("20261125", "u0"): 1}


def test_frequency_cap_give_back_replayed_after_a_lost_reply_gives_back_once(redis_client, proxy) -> None:
    from c2b.delivery.controls.frequency_cap import FrequencyCap
    from c2b.store.redis_retry import with_redis_retry

    fcap = FrequencyCap(_client(proxy.url, 0), 3)
    users = [("20261125", f"g{i}") for i in range(10)]
    assert fcap.take([(d, u, 3) for d, u in users]) == {k: 3 for k in users}
    _lose_reply_to(proxy, redis_client, fcap._script)
    receipt = fcap.new_receipt()
    with_redis_retry(lambda: fcap.give_back(users, receipt), patience=5)
    assert proxy.cuts == 1
    # Given back once: 2 touches left, so exactly one more fits under the cap of 3.
    assert [fcap.count(d, u) for d, u in users] == [2] * 10
    assert fcap.take([(d, u, 2) for d, u in users]) == {k: 1 for k in users}


def test_frequency_cap_after_redis_lost_its_script_cache_loads_it_and_counts_once(redis_client) -> None:
    from c2b.delivery.controls.frequency_cap import FrequencyCap

    fcap = FrequencyCap(redis_client, 1)
    assert fcap.take([("20261125", "s1", 1)]) == {("20261125", "s1"): 1}
    redis_client.script_flush()  # what a restart or a failover to a fresh replica does
    assert fcap.take([("20261125", "s1", 1), ("20261125", "s2", 1)]) == {("20261125", "s1"): 0,
                                                                      ("20261125", "s2"): 1}
    assert (fcap.count("20261125", "s1"), fcap.count("20261125", "s2")) == (1, 1)
