"""A plan's re-entry history leaves Redis at cleanup for one file per plan, and the next extract
still turns the same users away (real DuckDB, real Redis, real files)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2b import steps
from c2b.audience.warehouse import DuckDBWarehouse
from c2b.delivery.reentry import ReentryRule, bucket_key, forget_history, record_entries, stored_users
from c2b.delivery.reentry_archive import (
    ReentryHistoryError,
    _delete_unchanged,
    _read_buckets,
    archived_users,
    history_path,
    move_reentry_history,
    read_archived,
)
from c2b.plan.load import parse_plan


def _plan(plan_id: str, reentry) -> object:
    return parse_plan({"id": plan_id, "audience": {"segment": "all_users.sql"}, "reentry": reentry,
                       "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}, f"{plan_id}.yaml")


def _reentry_keys(redis_client, plan_id: str) -> list[bytes]:
    return list(redis_client.scan_iter(f"c2b:reentry:r:{{{plan_id}:*", count=10_000))


def test_cleanup_moves_the_history_and_the_next_run_still_turns_its_users_away(
        c2b_env: Path, demo_warehouse: Path, redis_client) -> None:
    plan = _plan("rx_move", {"after_days": 7})
    warehouse = DuckDBWarehouse(str(demo_warehouse))
    first = steps.step_extract(plan, "run1", warehouse, redis=redis_client)
    kept = pq.read_table(first["path"], columns=["uid"]).column("uid").to_pylist()
    assert len(kept) > 4096  # the extract's batches take the snapshot path (the small path: below)
    record_entries(plan, redis_client, kept, datetime.now(UTC))  # what the run's deliver tasks write
    assert sum(stored_users(redis_client, plan.id)) == len(kept)

    steps.step_cleanup(plan, "run1", redis_client)
    assert _reentry_keys(redis_client, plan.id) == [], "nothing of the plan's history is left in Redis"
    assert archived_users(plan.id) == len(kept)
    size = Path(str(history_path(plan.id).path)).stat().st_size
    assert 10 * len(kept) < size < 10 * len(kept) + 200  # 10 bytes a user, a header and a checksum

    nxt = steps.step_extract(plan, "run2", warehouse, redis=redis_client)
    assert nxt["counts"]["not_reentered"] == len(kept) and nxt["counts"]["kept"] == 0

    # Another run's sends land in Redis again; the next cleanup adds them to the file.
    record_entries(plan, redis_client, ["late-1", "late-2"], datetime.now(UTC))
    moved = move_reentry_history(redis_client, plan, datetime.now(UTC))
    assert moved is not None and moved.moved == 2 and moved.records == len(kept) + 2 and moved.kept == 0
    assert move_reentry_history(redis_client, plan, datetime.now(UTC)) is None, "Redis holds none: the file stays"
    assert archived_users(plan.id) == len(kept) + 2

    # The demo's reset forgets both tiers.
    record_entries(plan, redis_client, ["again"], datetime.now(UTC))
    assert forget_history(redis_client, plan.id) == len(kept) + 3
    assert archived_users(plan.id) == 0 and _reentry_keys(redis_client, plan.id) == []


def test_a_small_batch_reads_both_tiers_and_a_record_in_both_reads_the_same(c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_small", {"after_days": 3})
    now = datetime.now(UTC)
    record_entries(plan, redis_client, ["a1", "a2", "12345"], now - timedelta(days=1))
    assert move_reentry_history(redis_client, plan, now).records == 3
    record_entries(plan, redis_client, ["b1", "a2"], now)  # a2 in both tiers, b1 in Redis only
    rule = ReentryRule(plan, redis_client, now)
    mask = rule.matches(pa.array(["a1", "a2", "b1", "12345", "new"]))
    assert mask.tolist() == [True, True, True, True, False]
    # Days count from the record: three days later a1 (sent the day before) may enter again.
    later = ReentryRule(plan, redis_client, now + timedelta(days=2)).matches(pa.array(["a1", "a2", "b1"]))
    assert later.tolist() == [False, True, True]


def test_a_bucket_written_after_it_was_read_stays_in_redis(c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_race", "once")
    users = [f"r{i:04d}" for i in range(300)]
    record_entries(plan, redis_client, users, datetime.now(UTC))
    read = _read_buckets(redis_client, plan.id)
    assert len(read) > 100 and all(name.startswith(bucket_key(plan.id, 1)[:-6]) for name, _ in read)
    changed = read[0][0]
    redis_client.append(changed, b"\x01" * 8 + b"\x02\x00")  # a record written after the read
    assert _delete_unchanged(redis_client, read) == len(read) - 1
    assert _reentry_keys(redis_client, plan.id) == [changed.encode()]


def test_records_past_the_horizon_go_and_a_damaged_file_stops_the_extract_naming_it(
        c2b_env: Path, redis_client) -> None:
    plan = _plan("rx_old", {"after_days": 7})  # kept 31 days (history_days)
    now = datetime.now(UTC)
    record_entries(plan, redis_client, ["old1", "old2"], now - timedelta(days=40))
    record_entries(plan, redis_client, ["new1"], now)
    moved = move_reentry_history(redis_client, plan, now)
    assert (moved.moved, moved.records, moved.dropped) == (3, 1, 2)
    snapshot = read_archived(plan.id)
    assert snapshot is not None and snapshot.size == 1

    path = Path(str(history_path(plan.id).path))
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(ReentryHistoryError, match=f"{path.name} is not a whole re-entry history"):
        ReentryRule(plan, redis_client, now).matches(pa.array(["new1"]))
