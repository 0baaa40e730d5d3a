"""A batch gateway that answers a bare 2xx (no per-message results) has accepted the batch (#11).

Through a real shard delivery at the real local gateway: a ``200 {"ok": true}`` records every
message of the batch as sent, once; a connection that opts into per-message results
(``per_message_results: true``) records such an answer as a protocol error, once per message,
never retried. Either way no batch the gateway accepted is sent again.
"""

from __future__ import annotations

from pathlib import Path

from c2b.channels import ChannelConfig, make_channel
from c2b.delivery.shard import ShardDelivery

from devtools.deliverkit import expected_keys, load_audience, make_plan, plan_dict
from devtools.gateway import Faults, Gateway


def _deliver(redis_client, tmp_path: Path, plan_id: str, extra: dict) -> tuple[dict, Gateway, set[str]]:
    users = [f"b{i:04d}" for i in range(120)]
    data = plan_dict(plan_id, channel="sms", page_size=50, concurrency=4)
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway(Faults(bare_batch_ok=True, dedupe=False)) as gw:
        channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, extra=extra, conn_id="c_sms"))
                    for t in plan.touches}
        stats = ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False).run(50, 4).to_xcom()
    return stats, gw, expected_keys(plan, "r1", users)


def test_bare_2xx_to_a_batch_records_every_message_sent_once(redis_client, tmp_path: Path) -> None:
    stats, gw, want = _deliver(redis_client, tmp_path, "p_bare_ok", {"batch_size": 20})
    rec = gw.record
    assert set(rec.keys) == want and set(rec.keys.values()) == {1}, "each message reached the gateway once"
    assert rec.paths == {"/send/batch": 7}  # pages of 50, 50, 20 in batches of 20
    assert stats["counts"] == {"all|t0|sent": 120} and not stats["failures"]


def test_bare_2xx_is_a_protocol_error_when_the_connection_expects_per_message_results(
        redis_client, tmp_path: Path) -> None:
    stats, gw, want = _deliver(redis_client, tmp_path, "p_bare_strict",
                               {"batch_size": 20, "per_message_results": True})
    rec = gw.record
    assert set(rec.keys) == want and set(rec.keys.values()) == {1}, "not retried"
    assert rec.requests == 7
    assert stats["counts"] == {"all|t0|failed": 120}
    [(reason, n)] = stats["failures"].items()
    assert n == 120 and "per-message results" in reason and "protocol" in reason


def test_batch_answer_rules_without_a_server() -> None:
    import pytest
    from c2b.channels.base import Message
    from c2b.channels.http import _batch_outcomes

    msgs = [Message(f"k{i}", "p", "r", "t", "sms", f"u{i}", "a", "hi") for i in range(3)]
    partial = b'{"results": [{"idempotency_key": "k0", "status": 200}, {"idempotency_key": "k1", "status": 503}]}'
    got = [(o.status, o.reason[:9]) for o in _batch_outcomes(msgs, 200, partial)]
    assert got == [("sent", ""), ("retry", "http 503"), ("failed", "protocol:")]
    assert {o.status for o in _batch_outcomes(msgs, 202, b"")} == {"sent"}
    assert {o.status for o in _batch_outcomes(msgs, 503, b"")} == {"retry"}
    with pytest.raises(ValueError, match="per_message_results"):
        make_channel("sms", ChannelConfig(url="http://127.0.0.1:9/x", extra={"per_message_results": "maybe"}))


def test_batch_read_ahead_keeps_the_ledger_hash_under_10k_fields(redis_client, tmp_path: Path) -> None:
    """Read-ahead is counted in messages (#13 item 7): with batches of 100 and pages of 1,000, the old
    ``max(concurrency, page_size)`` *requests* ahead let a 24k-user shard's pending entries all pile up
    in the ledger hash while a slow gateway worked through them. The main pass now keeps its pending
    entries in its pages' record strings (the hash stays empty): the bound is on the shard's pending
    count, which the read-ahead still sets."""
    import threading

    from c2b.store.shards import ShardKeys

    users = [f"r{i:05d}" for i in range(24_000)]
    plan = make_plan(plan_dict("p_ahead", channel="sms", page_size=1000, concurrency=4, max_shard_members=30_000))
    load_audience(redis_client, plan, "r1", users, tmp_path)
    keys = ShardKeys(plan.id, "r1", 1)
    stats_key = f"c2b:{keys.tag}:stats"
    seen: list[int] = []
    hashed: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(int(redis_client.hget(stats_key, "#pending") or 0))
            hashed.append(int(redis_client.hlen(keys.ledger)))
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    with Gateway(Faults(median_latency_s=0.02, latency_sigma=0.1, count_only=True)) as gw:
        channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, extra={"batch_size": 100},
                                                                  conn_id="c_sms")) for t in plan.touches}
        sampler.start()
        try:
            stats = ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False).run(1000, 4).to_xcom()
        finally:
            done.set()
            sampler.join()
    assert stats["counts"] == {"all|t0|sent": 24_000}
    assert max(seen) > 1000, "the sampler saw the delivery under way"
    assert max(seen) < 10_000, f"the shard held up to {max(seen):,} pending entries"
    assert max(hashed) == 0, "the main pass wrote to the ledger hash"
