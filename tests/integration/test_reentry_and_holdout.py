"""Re-entry rules and a line's global holdout, end to end: delivery writes the plan's history,
the next extract turns users away and counts them (real DuckDB, real Redis, real outbox files)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2b.audience.eligibility import GlobalHoldout
from c2b.audience.extract import extract_audience
from c2b.audience.warehouse import DuckDBWarehouse
from c2b.delivery.reentry import BUCKETS, bucket_key, record_sends, stored_users
from c2b.plan.load import parse_plan

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def _plan(reentry=None, plan_id: str = "reent"):
    data = {"id": plan_id, "audience": {"segment": "all_users.sql"},
            "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}
    if reentry is not None:
        data["reentry"] = reentry
    return parse_plan(data, f"{plan_id}.yaml")


def _audience(demo_warehouse: Path) -> list[str]:
    con = duckdb.connect(str(demo_warehouse), read_only=True)
    try:
        return [str(r[0]) for r in con.execute("SELECT uid FROM users WHERE NOT opted_out ORDER BY uid").fetchall()]
    finally:
        con.close()


def _extract(plan, demo_warehouse: Path, tmp_path: Path, redis, now: datetime, holdout=None):
    out = tmp_path / f"{plan.id}-{now:%Y%m%d}.parquet"
    result = extract_audience(plan, DuckDBWarehouse(str(demo_warehouse)), out, redis=redis, now=now, holdout=holdout)
    assert result.counts.balanced()
    return result.counts, set(pq.read_table(out, columns=["uid"]).column("uid").to_pylist())


@pytest.mark.parametrize("reentry, days_later, turned_away", [
    (None, 6, True), (None, 7, False),                 # the default: again after 7 days
    ({"after_days": 30}, 29, True), ({"after_days": 30}, 30, False),
    ({"after_days": 0}, 0, False),                     # every run
    ("once", 1000, True),                              # never again
], ids=["default-6d", "default-7d", "30d-29d", "30d-30d", "0d", "once-1000d"])
def test_reentry_rule_turns_away_recent_receivers(demo_warehouse: Path, redis_client, tmp_path: Path,
                                                  reentry, days_later: int, turned_away: bool) -> None:
    plan = _plan(reentry)
    audience = _audience(demo_warehouse)
    sent = audience[:50]
    # What the delivery does when a message is recorded sent: the cross-plan record and the plan's own.
    record_sends(plan, lambda *_: None)(redis_client, sent, NOW)
    counts, kept = _extract(plan, demo_warehouse, tmp_path, redis_client, NOW + timedelta(days=days_later))
    if turned_away:
        assert counts.not_reentered == 50 and not kept & set(sent)
        assert counts.kept == len(audience) - 50
    else:
        assert counts.not_reentered == 0 and set(sent) <= kept
    assert "not re-entered" in counts.describe()


def test_reentry_history_is_per_plan_and_bounded(demo_warehouse: Path, redis_client, tmp_path: Path) -> None:
    plan, other = _plan("once"), _plan("once", "other_plan")
    audience = _audience(demo_warehouse)
    record_sends(plan, lambda *_: None)(redis_client, audience, NOW)
    counts, _ = _extract(other, demo_warehouse, tmp_path, redis_client, NOW)
    assert counts.not_reentered == 0  # another plan's sends do not count
    sizes = stored_users(redis_client, plan.id)
    assert len(sizes) == BUCKETS and sum(sizes) == len(audience) and max(sizes) < 100  # ~10 B a user, spread
    ttl = redis_client.ttl(bucket_key(plan.id, 1 + next(i for i, n in enumerate(sizes) if n)))
    assert ttl > 1000 * 86_400  # 'once' keeps its history for years, refreshed by every send


def test_global_holdout_is_a_deterministic_slice_never_touched(demo_warehouse: Path, redis_client,
                                                               tmp_path: Path) -> None:
    holdout = GlobalHoldout(0.05, "growth-2026")
    audience = _audience(demo_warehouse)
    members = set(pa.array(audience).filter(pa.array(holdout.members(pa.array(audience)))).to_pylist())
    assert 0.04 < len(members) / len(audience) < 0.06
    plan = _plan({"after_days": 0})
    day1, kept1 = _extract(plan, demo_warehouse, tmp_path, redis_client, NOW, holdout)
    day2, kept2 = _extract(plan, demo_warehouse, tmp_path, redis_client, NOW + timedelta(days=1), holdout)
    assert day1.global_holdout == day2.global_holdout == len(members)  # the same users every day
    assert not kept1 & members and kept1 == kept2 == set(audience) - members
    # Another plan of the line holds out the very same users.
    _, kept3 = _extract(_plan({"after_days": 0}, "another"), demo_warehouse, tmp_path, redis_client, NOW, holdout)
    assert not kept3 & members
    # A different salt draws a different slice.
    other = GlobalHoldout(0.05, "care-2026")
    assert set(pa.array(audience).filter(pa.array(other.members(pa.array(audience)))).to_pylist()) != members


def test_a_delivered_run_writes_the_plan_history(redis_client, tmp_path: Path) -> None:
    """Through the real shard loop: sent users get the plan's re-entry record, others do not."""
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.shard import ShardDelivery

    from devtools.deliverkit import load_audience

    plan = _plan("once", "reent_live")
    users = [f"u{i:03d}" for i in range(40)]
    load_audience(redis_client, plan, "r1", users, tmp_path / "staging")
    channels = {"t": make_channel("outbox", ChannelConfig(run_dir=str(tmp_path / "out")))}
    for shard in range(1, plan.delivery.shards + 1):
        ShardDelivery(redis_client, plan, "r1", shard, channels, lambda: False).run(10, 4)
    assert sum(stored_users(redis_client, plan.id)) == len(users)


def test_control_users_enter_the_plan_too_so_reentry_keeps_the_split(redis_client, tmp_path: Path) -> None:
    """Re-entry turns away both arms alike: control users get the plan's record when their page is
    delivered. Recording only the sent users made the next run of the demo plan a sample-ratio
    mismatch (its 1,000 treated users of the day before turned away, none of their controls)."""
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.shard import ShardDelivery
    from c2b.hashing import VariantPicker

    from devtools.deliverkit import load_audience, plan_dict

    data = plan_dict("reent_arms", channel="outbox", control=50, shards=2, page_size=10)
    data["reentry"] = {"after_days": 7}
    plan = parse_plan(data, "reent_arms.yaml")
    users = [f"u{i:03d}" for i in range(200)]
    load_audience(redis_client, plan, "r1", users, tmp_path / "staging")
    channels = {"t0": make_channel("outbox", ChannelConfig(run_dir=str(tmp_path / "out")))}
    for shard in range(1, plan.delivery.shards + 1):
        ShardDelivery(redis_client, plan, "r1", shard, channels, lambda: False).run(10, 4)
    picker = VariantPicker(plan.salt, plan.variant_weights)
    controls = {u for u in users if picker.pick(u.encode()) == "control"}
    assert 50 < len(controls) < 150
    from functools import partial

    from c2b.delivery.contacts import last_days

    days = last_days(redis_client, users, key_of=partial(bucket_key, plan.id), buckets=BUCKETS, legacy_of=None)
    assert sum(stored_users(redis_client, plan.id)) == len(users) and days.all()  # treated and control alike
    # The next run's extract turns every one of them away, whatever their arm.
    from c2b.audience.eligibility import Eligibility

    rule = Eligibility(plan, redis_client, datetime.now(UTC))
    alive = np.ones(len(users), dtype=bool)
    counts = SimpleNamespace(global_holdout=0, not_reentered=0)
    rule.apply(pa.array(users), alive, counts)
    assert not alive.any() and counts.not_reentered == len(users)


def test_a_cleared_run_keeps_its_audience_but_the_next_run_applies_reentry(
        demo_warehouse: Path, redis_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running extract_audience of a run (a retry, a cleared run) must not turn away the users
    that very run already sent to: the run's audience is decided once."""
    from c2b import steps

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    plan = _plan({"after_days": 7}, "reent_clear")
    warehouse = DuckDBWarehouse(str(demo_warehouse))
    first = steps.step_extract(plan, "run1", warehouse, redis=redis_client)
    kept = pq.read_table(first["path"], columns=["uid"]).column("uid").to_pylist()
    record_sends(plan, lambda *_: None)(redis_client, kept, datetime.now(UTC))  # the run delivered
    again = steps.step_extract(plan, "run1", warehouse, redis=redis_client)
    assert again["counts"] == first["counts"] and again["counts"]["not_reentered"] == 0
    nxt = steps.step_extract(plan, "run2", warehouse, redis=redis_client)
    assert nxt["counts"]["not_reentered"] == len(kept) and nxt["counts"]["kept"] == 0


def test_the_demo_can_forget_a_plans_history_and_only_that_plans(redis_client) -> None:
    from c2b.delivery.reentry import forget_history, record_entries

    mine, other = _plan("once", "reent_mine"), _plan("once", "reent_other")
    users = [f"u{i:03d}" for i in range(300)]
    record_entries(mine, redis_client, users, NOW)
    record_entries(other, redis_client, users[:10], NOW)
    assert forget_history(redis_client, mine.id) == len(users)
    assert not any(redis_client.exists(bucket_key(mine.id, b)) for b in range(1, BUCKETS + 1))
    assert sum(stored_users(redis_client, other.id)) == 10
    assert forget_history(redis_client, mine.id) == 0


def _evalsha_calls(redis) -> tuple[int, int]:
    stats = redis.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0), stats.get("cmdstat_eval", {}).get("calls", 0)


def test_a_flush_writes_both_histories_in_one_script_call(redis_client) -> None:
    """The cross-plan contacts and the plan's re-entry history of a flush: one EVALSHA taking every
    bucket of both, however many buckets (the body sent once, after the server's NOSCRIPT); a
    lookup of the flush's users, one EVALSHA."""
    from c2b.delivery.contacts import DEFAULT_TTL_DAYS, contacted_since, epoch_day, last_days, record_contacts
    from c2b.delivery.contacts import bucket_key as contacts_key
    from c2b.delivery.reentry import history_days

    plan = _plan({"after_days": 40}, "reent_flush")
    record = record_sends(plan, record_contacts)
    users = [str(10**9 + i) for i in range(64)] + ["a\ud800z", "用户"]
    redis_client.script_flush()
    redis_client.config_resetstat()
    record(redis_client, users, NOW - timedelta(days=3))
    record(redis_client, users[:10], NOW - timedelta(days=40))  # older: keeps the later day
    record(redis_client, users[:5] + users[:5], NOW)  # a uid twice in one flush: one record
    assert _evalsha_calls(redis_client) == (4, 0)  # 3 calls + the one NOSCRIPT answer before the load
    assert redis_client.info("commandstats")["cmdstat_script|load"]["calls"] == 1

    own = partial(bucket_key, plan.id)
    days = last_days(redis_client, users, key_of=own, buckets=BUCKETS, legacy_of=None)
    redis_client.config_resetstat()
    assert last_days(redis_client, users, key_of=own, buckets=BUCKETS, legacy_of=None).tolist() == days.tolist()
    assert _evalsha_calls(redis_client) == (1, 0)  # lookups too: one call for every bucket (up to 512)
    expect = [epoch_day(NOW)] * 5 + [epoch_day(NOW - timedelta(days=3))] * (len(users) - 5)
    assert days.tolist() == expect
    assert last_days(redis_client, users, legacy_of=None).tolist() == expect
    assert contacted_since(redis_client, users, NOW - timedelta(days=3)) == [True] * len(users)
    assert sum(stored_users(redis_client, plan.id)) == len(users)
    ours = {own(b) for b in range(1, BUCKETS + 1) if redis_client.exists(own(b))}
    assert all(history_days(plan) * 86_400 - 60 < redis_client.ttl(k) <= history_days(plan) * 86_400 for k in ours)
    theirs = [k for k in redis_client.scan_iter("c2b:contacts:r:*")]
    assert theirs and all(redis_client.ttl(k) > (DEFAULT_TTL_DAYS - 1) * 86_400 for k in theirs)
    assert contacts_key(1).startswith("c2b:contacts:r:")

    # A recorder other than the default contacts: called as given, the plan's history on its own.
    seen: list[list[str]] = []
    record_sends(plan, lambda redis, uids, when: seen.append(uids))(redis_client, ["x9"], NOW)
    assert seen == [["x9"]] and last_days(redis_client, ["x9"], key_of=own, buckets=BUCKETS,
                                          legacy_of=None).tolist() == [epoch_day(NOW)]


def test_a_large_batch_is_written_in_calls_of_at_most_write_keys_buckets(redis_client) -> None:
    """A batch bigger than a flush (a page of control users, or more) is split so that no single
    script call holds the server for long; every record lands."""
    from c2b.delivery.contacts import WRITE_KEYS, epoch_day, last_days
    from c2b.delivery.reentry import record_entries
    from c2b.hashing import shard_index

    plan = _plan("once", "reent_big")
    users = [str(3 * 10**9 + i) for i in range(3000)]
    record_entries(plan, redis_client, users, NOW)  # loads the script
    redis_client.config_resetstat()
    record_entries(plan, redis_client, users, NOW + timedelta(days=1))
    buckets = len({shard_index(u, BUCKETS) for u in users})
    assert buckets > 2 * WRITE_KEYS
    assert _evalsha_calls(redis_client) == (-(-buckets // WRITE_KEYS), 0)
    own = partial(bucket_key, plan.id)
    assert last_days(redis_client, users, key_of=own, buckets=BUCKETS, legacy_of=None).tolist() == \
        [epoch_day(NOW + timedelta(days=1))] * len(users)
    assert sum(stored_users(redis_client, plan.id)) == len(users)


def test_cleanup_writes_the_histories_of_a_shard_whose_attempt_never_ended(redis_client, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """Histories are written at the end of a shard's attempt; a shard that sent but never got there
    (here: its writes and mark wiped, as after a worker lost for good) is written by cleanup."""
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.contacts import contacted_since
    from c2b.delivery.histories import histories_key
    from c2b.delivery.shard import ShardDelivery
    from c2b.store.shards import ShardKeys

    from devtools.deliverkit import load_audience

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    plan = _plan("once", "reent_cleanup")
    users = [f"c{i:03d}" for i in range(40)]
    sizes = load_audience(redis_client, plan, "r1", users, tmp_path / "staging")
    channels = {"t": make_channel("outbox", ChannelConfig(run_dir=str(tmp_path / "out")))}
    for shard in sizes:
        ShardDelivery(redis_client, plan, "r1", shard, channels, lambda: False).run(10, 4)
    assert all(contacted_since(redis_client, users, datetime.now(UTC)))
    marks = [histories_key(ShardKeys(plan.id, "r1", s)) for s in sizes]
    assert all(redis_client.exists(m) for m in marks)
    for key in [*redis_client.scan_iter("c2b:contacts:r:*"), *redis_client.scan_iter("c2b:reentry:r:*"), *marks]:
        redis_client.delete(key)
    assert not any(contacted_since(redis_client, users, datetime.now(UTC)))
    steps.step_cleanup(plan, "r1", redis_client)
    assert all(contacted_since(redis_client, users, datetime.now(UTC)))
    from c2b.delivery.reentry import history_archive

    # cleanup wrote the plan's history, then moved it out of Redis into the plan's file
    assert sum(stored_users(redis_client, plan.id)) == 0 and history_archive(plan.id).users() == len(users)
    assert not any(redis_client.exists(m) for m in marks)  # a cleared re-run marks its own attempts


def test_a_tasks_shards_write_the_histories_as_one_batch(redis_client, tmp_path: Path, monkeypatch) -> None:
    """A deliver task's shards hand their sent users to one HistoryBatch: nothing is written or
    marked until it is flushed (a task that dies first leaves its shards to the retry or cleanup);
    then every shard's users are in both histories, written in one script call, and every shard is
    marked."""
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.contacts import _RECORD_MAX, contacted_since, record_contacts
    from c2b.delivery.histories import HistoryBatch, histories_key
    from c2b.delivery.shard import ShardDelivery
    from c2b.store.shards import ShardKeys

    from devtools.deliverkit import load_audience

    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    plan = _plan("once", "reent_batch")
    users = [str(5 * 10**9 + i) for i in range(300)]
    sizes = load_audience(redis_client, plan, "r1", users, tmp_path / "staging")
    assert len(sizes) > 1
    batch = HistoryBatch(redis_client, plan, "r1", record_sends(plan, record_contacts), 3600)
    for shard in sizes:
        channels = {"t": make_channel("outbox", ChannelConfig(run_dir=str(tmp_path / "out")))}
        ShardDelivery(redis_client, plan, "r1", shard, channels, lambda: False, history_batch=batch).run(50, 4)
    marks = [histories_key(ShardKeys(plan.id, "r1", s)) for s in sizes]
    now = datetime.now(UTC)
    assert not any(contacted_since(redis_client, users, now - timedelta(days=1)))
    assert not any(redis_client.exists(m) for m in marks)
    redis_client.script_load(_RECORD_MAX)  # no NOSCRIPT answer first
    redis_client.config_resetstat()
    batch.flush()
    assert _evalsha_calls(redis_client) == (1, 0)  # both histories, every shard: one call
    assert all(contacted_since(redis_client, users, now - timedelta(days=1)))
    assert sum(stored_users(redis_client, plan.id)) == len(users)
    assert all(redis_client.exists(m) for m in marks)
    redis_client.config_resetstat()
    batch.flush()  # empty: writes nothing
    assert _evalsha_calls(redis_client) == (0, 0)


def test_a_full_history_batch_writes_itself_and_keeps_each_days_users_on_their_day(redis_client) -> None:
    from c2b.delivery.contacts import BUCKETS as CONTACT_BUCKETS
    from c2b.delivery.contacts import bucket_key as contact_key
    from c2b.delivery.contacts import epoch_day, last_days, record_contacts
    from c2b.delivery.histories import HistoryBatch, histories_key
    from c2b.store.shards import ShardKeys

    plan = _plan(None, "reent_batch_days")
    batch = HistoryBatch(redis_client, plan, "r1", record_sends(plan, record_contacts), 3600, max_users=250)
    late, early = [str(6 * 10**9 + i) for i in range(100)], [str(7 * 10**9 + i) for i in range(200)]
    batch.add(1, late, NOW)
    assert not redis_client.exists(histories_key(ShardKeys(plan.id, "r1", 1)))
    batch.add(2, early, NOW + timedelta(days=1))  # past 250 users: written now
    assert redis_client.exists(histories_key(ShardKeys(plan.id, "r1", 1)))
    assert redis_client.exists(histories_key(ShardKeys(plan.id, "r1", 2)))
    days = last_days(redis_client, late + early, key_of=contact_key, buckets=CONTACT_BUCKETS, legacy_of=None)
    assert days.tolist() == [epoch_day(NOW)] * 100 + [epoch_day(NOW + timedelta(days=1))] * 200
