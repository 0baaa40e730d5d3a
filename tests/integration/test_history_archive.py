"""The re-entry and contact histories leave Redis at cleanup for files on the run artifacts' storage,
and later extracts still turn the same users away (real DuckDB, real Redis, real files)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2b import steps
from c2b.audience.warehouse import DuckDBWarehouse
from c2b.delivery import contacts
from c2b.delivery.contacts import record_contacts
from c2b.delivery.history_archive import HistoryArchiveError
from c2b.delivery.history_snapshot import HistoryLookup
from c2b.delivery.reentry import (
    ReentryRule,
    bucket_key,
    forget_history,
    history_archive,
    history_days,
    record_entries,
    stored_users,
)
from c2b.plan.load import parse_plan


def _plan(plan_id: str, reentry, exclude=None) -> object:
    audience = {"segment": "all_users.sql"} | ({"exclude": exclude} if exclude else {})
    return parse_plan({"id": plan_id, "audience": audience, "reentry": reentry,
                       "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}, f"{plan_id}.yaml")


def _keys(redis_client, pattern: str) -> list[bytes]:
    return list(redis_client.scan_iter(pattern, count=10_000))


def _move(redis_client, plan, now: datetime):
    return history_archive(plan.id, history_days(plan)).move(redis_client, now)


def test_cleanup_moves_both_histories_and_later_extracts_still_turn_the_users_away(
        c2b_env: Path, demo_warehouse: Path, redis_client) -> None:
    plan = _plan("rx_move", {"after_days": 7})
    warehouse = DuckDBWarehouse(str(demo_warehouse))
    first = steps.step_extract(plan, "run1", warehouse, redis=redis_client)
    kept = pq.read_table(first["path"], columns=["uid"]).column("uid").to_pylist()
    assert len(kept) > 4096  # the extract's batches take the snapshot path (the small path: below)
    now = datetime.now(UTC)
    record_entries(plan, redis_client, kept, now)  # what the run's deliver tasks write
    record_contacts(redis_client, kept, now)
    assert sum(stored_users(redis_client, plan.id)) == len(kept)

    steps.step_cleanup(plan, "run1", redis_client)
    assert _keys(redis_client, "c2b:reentry:r:*") == [] and _keys(redis_client, "c2b:contacts:r:*") == []
    assert history_archive(plan.id).users() == len(kept) == contacts.history_archive().users()
    size = Path(str(history_archive(plan.id).path.path)).stat().st_size
    assert 10 * len(kept) < size < 10 * len(kept) + 200  # 10 bytes a user, a header and a checksum

    nxt = steps.step_extract(plan, "run2", warehouse, redis=redis_client)
    assert nxt["counts"]["not_reentered"] == len(kept) and nxt["counts"]["kept"] == 0
    # Another plan excluding anyone contacted in the last 3 days finds them in the contact file.
    other = _plan("rx_other", {"after_days": 0}, exclude=[{"contacted_within_days": 3}])
    theirs = steps.step_extract(other, "run1", warehouse, redis=redis_client)
    assert theirs["counts"]["kept"] == 0 and sum(theirs["counts"]["excluded_by"].values()) == len(kept)

    # Another run's sends land in Redis again; the next move adds them to the file.
    record_entries(plan, redis_client, ["late-1", "late-2"], now)
    moved = _move(redis_client, plan, now)
    assert moved is not None and moved.moved == 2 and moved.records == len(kept) + 2 and moved.kept == 0
    assert _move(redis_client, plan, now) is None, "Redis holds none: the file stays as it is"
    assert history_archive(plan.id).users() == len(kept) + 2

    # The demo's reset forgets both tiers of the plan's history, and nothing of the contacts.
    record_entries(plan, redis_client, ["again"], now)
    assert forget_history(redis_client, plan.id) == len(kept) + 3
    assert history_archive(plan.id).users() == 0 and _keys(redis_client, "c2b:reentry:r:*") == []
    assert contacts.history_archive().users() == len(kept)


def test_a_small_batch_reads_redis_then_the_file_and_a_record_in_both_reads_the_same(
        c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_small", {"after_days": 3})
    now = datetime.now(UTC)
    record_entries(plan, redis_client, ["a1", "a2", "12345"], now - timedelta(days=1))
    assert _move(redis_client, plan, now).records == 3
    record_entries(plan, redis_client, ["b1", "a2"], now)  # a2 in both tiers, b1 in Redis only
    rule = ReentryRule(plan, redis_client, now)
    assert rule.matches(pa.array(["a1", "a2", "b1", "12345", "new"])).tolist() == [True, True, True, True, False]
    # Days count from the record: two days later a1 (entered the day before) may enter again.
    later = ReentryRule(plan, redis_client, now + timedelta(days=2)).matches(pa.array(["a1", "a2", "b1"]))
    assert later.tolist() == [False, True, True]


def test_a_lookup_sees_a_move_that_happens_while_it_runs(c2b_env: Path, redis_client) -> None:
    """A reader keeps its Redis snapshot; a move then takes the records out of Redis: the reader's
    next batch re-reads the changed file and still finds them."""
    now = datetime.now(UTC)
    users = [str(10_000_000 + i) for i in range(6000)]
    record_contacts(redis_client, users[:3000], now)
    lookup = HistoryLookup(redis_client, archive=contacts.history_archive())
    assert lookup.matches(pa.array(users[:5000]), now - timedelta(days=1)).sum() == 3000  # the snapshot
    record_contacts(redis_client, users[3000:], now)  # sent after the snapshot...
    assert contacts.history_archive().move(redis_client, now).moved == 6000  # ...and moved out of Redis
    assert _keys(redis_client, "c2b:contacts:r:*") == []
    assert lookup.matches(pa.array(users), now - timedelta(days=1)).sum() == 6000


def test_a_bucket_written_after_it_was_read_stays_in_redis(c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_race", "once")
    archive = history_archive(plan.id, history_days(plan))
    record_entries(plan, redis_client, [f"r{i:04d}" for i in range(300)], datetime.now(UTC))
    read = archive.read_buckets(redis_client)
    assert len(read) > 100 and all(name.startswith(bucket_key(plan.id, 1)[:-6]) for name, _ in read)
    changed = read[0][0]
    redis_client.append(changed, b"\x01" * 8 + b"\x02\x00")  # a record written after the read
    seen = [(name, hashlib.sha1(value).hexdigest()) for name, value in read]
    assert archive.delete_unchanged(redis_client, seen) == len(read) - 1
    assert _keys(redis_client, "c2b:reentry:r:*") == [changed.encode()]


def test_moves_of_one_history_take_turns(c2b_env: Path, redis_client) -> None:
    archive = contacts.history_archive()
    record_contacts(redis_client, ["t1"], datetime.now(UTC))
    redis_client.set(archive.lock, "another cleanup")
    with pytest.raises(RuntimeError, match="another cleanup has been moving the contact history"):
        archive.move(redis_client, datetime.now(UTC), wait_s=0.3)
    threading.Timer(0.5, redis_client.delete, [archive.lock]).start()  # the other move ends
    assert archive.move(redis_client, datetime.now(UTC), wait_s=10).moved == 1
    assert not redis_client.exists(archive.lock)


def test_records_past_the_horizon_go_and_a_damaged_file_stops_the_extract_naming_it(
        c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_old", {"after_days": 7})  # kept 31 days (history_days)
    now = datetime.now(UTC)
    record_entries(plan, redis_client, ["old1", "old2"], now - timedelta(days=40))
    record_entries(plan, redis_client, ["new1"], now)
    moved = _move(redis_client, plan, now)
    assert (moved.moved, moved.records, moved.dropped) == (3, 1, 2)

    path = Path(str(history_archive(plan.id).path.path))
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(HistoryArchiveError, match=f"{path.name} is not a whole re-entry history of plan rx_old"):
        ReentryRule(plan, redis_client, now).matches(pa.array(["new1"]))
