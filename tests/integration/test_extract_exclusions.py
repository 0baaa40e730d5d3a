"""Exclusions (segments, suppression lists, recently contacted) on a real DuckDB file and real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from c2b.audience.extract import extract_audience
from c2b.audience.warehouse import DuckDBWarehouse
from c2b.cli import main as cli
from c2b.delivery.contacts import (
    BUCKETS,
    LEGACY_BUCKETS,
    RECORD,
    bucket_key,
    contacted_since,
    contacted_since_array,
    epoch_day,
    last_days,
    legacy_bucket_key,
    prune_contacts,
    record_contacts,
)
from c2b.plan.load import parse_plan

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def _plan(exclude: list[dict]):
    return parse_plan({
        "id": "excl", "audience": {"segment": "all_users.sql", "exclude": exclude},
        "touches": [{"name": "t", "channel": "outbox", "template": "hi"}],
    }, "excl.yaml")


def test_exclusions_are_counted_per_item_in_plan_order(demo_warehouse: Path, redis_client, redis_server,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    con = duckdb.connect(str(demo_warehouse), read_only=True)
    audience = [str(r[0]) for r in con.execute("SELECT uid FROM users WHERE NOT opted_out ORDER BY uid").fetchall()]
    ordered = {str(r[0]) for r in con.execute(
        "SELECT DISTINCT uid FROM orders WHERE created_at >= current_date - INTERVAL 14 DAY").fetchall()}
    con.close()
    in_segment = [u for u in audience if u in ordered]
    rest = [u for u in audience if u not in ordered]
    assert len(in_segment) > 100

    # Suppression list through the CLI: two audience users, one who is also excluded by the segment
    # (counted there, the first matching item), and one stranger.
    monkeypatch.setenv("C2B_REDIS_URL", redis_server.url)
    assert cli(["suppress", "add", "vip", rest[0], rest[1], in_segment[0], "not_a_user"]) == 0
    assert cli(["suppress", "remove", "vip", "not_a_user"]) == 0
    assert cli(["suppress", "list", "vip"]) == 0
    listed = capsys.readouterr().out
    assert set(listed.split()) >= {rest[0], rest[1], in_segment[0]} and "not_a_user" not in listed
    # Contact history: two contacted 2 days ago (excluded), one 30 days ago (not excluded).
    record_contacts(redis_client, [rest[2], rest[3]], NOW - timedelta(days=2))
    record_contacts(redis_client, [rest[4]], NOW - timedelta(days=30))

    plan = _plan([{"segment": "ordered_within_days.sql", "params": {"days": 14}},
                  {"suppression_list": "vip"}, {"contacted_within_days": 7}])
    result = extract_audience(plan, DuckDBWarehouse(demo_warehouse), tmp_path / "out.parquet",
                              batch_rows=5000, redis=redis_client, now=NOW)
    c = result.counts
    assert c.excluded_by == {"segment:ordered_within_days.sql": len(in_segment), "suppression_list:vip": 2,
                             "contacted_within_days:7": 2}
    assert c.excluded == len(in_segment) + 4
    assert c.kept == len(audience) - c.excluded and c.balanced()
    kept = set(pq.read_table(result.path).column("uid").to_pylist())
    assert kept == set(rest) - {rest[0], rest[1], rest[2], rest[3]}
    assert rest[4] in kept


def test_redis_exclusions_need_redis(demo_warehouse: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs Redis"):
        extract_audience(_plan([{"suppression_list": "vip"}]), DuckDBWarehouse(demo_warehouse), tmp_path / "x.parquet")


def test_contact_history_layout_and_semantics(redis_client) -> None:
    uids = [str(10**9 + i) for i in range(5000)] + ["a\ud800z", "用户"]
    record_contacts(redis_client, uids, NOW - timedelta(days=3))
    # An older record never moves a contact back in time.
    record_contacts(redis_client, uids[:10], NOW - timedelta(days=40))
    assert contacted_since(redis_client, uids[:10], NOW - timedelta(days=7)) == [True] * 10
    assert contacted_since(redis_client, uids[:3] + ["never"], NOW - timedelta(days=1)) == [False] * 4
    assert contacted_since(redis_client, ["never", uids[5]], NOW - timedelta(days=3)) == [False, True]
    assert contacted_since(redis_client, [], NOW) == []

    keys = [k.decode() for k in redis_client.scan_iter("c2b:contacts:*")]
    assert 0 < len(keys) <= BUCKETS and all(k.startswith("c2b:contacts:r:{") and k.endswith("}") for k in keys)
    # Fixed-width records (uid key, day), spread: no big key, 10 bytes a user.
    assert all(redis_client.strlen(k) % RECORD == 0 for k in keys)
    assert sum(redis_client.strlen(k) for k in keys) == RECORD * len(uids)
    assert max(redis_client.strlen(k) for k in keys) < 10 * RECORD
    assert all(0 < redis_client.ttl(k) <= 180 * 86_400 for k in keys)
    assert last_days(redis_client, ["nobody", uids[0]]).tolist() == [0, epoch_day(NOW - timedelta(days=3))]
    assert redis_client.strlen(_key_of(redis_client, uids[0])) >= RECORD

    texts = pa.array(uids[:-2] + ["never", "用户"])
    vector = contacted_since_array(redis_client, texts, NOW - timedelta(days=7)).tolist()
    assert vector == contacted_since(redis_client, texts.to_pylist(), NOW - timedelta(days=7))
    assert vector == [True] * 5000 + [False, True]

    record_contacts(redis_client, ["old"], NOW - timedelta(days=100))
    assert prune_contacts(redis_client, NOW - timedelta(days=90)) == 1
    assert contacted_since(redis_client, ["old"], NOW - timedelta(days=365)) == [False]


def test_contacts_of_the_former_hash_layout_are_still_read_and_pruned(redis_client) -> None:
    """History written by earlier versions (uid -> day in 1,024 hashes) counts until it expires."""
    from c2b.delivery import contacts
    from c2b.hashing import shard_index

    contacts._legacy_seen.clear()
    for uid, days_ago in (("7", 2), ("x1", 50), ("8", 100)):
        day = epoch_day(NOW - timedelta(days=days_ago))
        redis_client.hset(legacy_bucket_key(shard_index(uid, LEGACY_BUCKETS)), uid, day)
    record_contacts(redis_client, ["7"], NOW - timedelta(days=30))  # the legacy day is later: it wins
    since = NOW - timedelta(days=60)
    assert contacted_since(redis_client, ["7", "x1", "8", "9"], since) == [True, True, False, False]
    assert contacted_since(redis_client, ["7"], NOW - timedelta(days=3)) == [True]
    assert contacted_since_array(redis_client, pa.array(["x1", "8"]), since).tolist() == [True, False]
    assert prune_contacts(redis_client, NOW - timedelta(days=90)) == 1  # the 100-day-old legacy field
    assert contacted_since(redis_client, ["8"], NOW - timedelta(days=365)) == [False]
    contacts._legacy_seen.clear()


def _key_of(redis_client, uid: str) -> str:
    from c2b.hashing import shard_index

    return bucket_key(shard_index(uid, BUCKETS))


def test_large_batches_read_the_history_once_and_agree_with_the_lookup_scripts(redis_client) -> None:
    """A batch of >= MIN_BATCH uids is looked up in a snapshot of the whole history (one GET per
    bucket), and gets exactly the answers of the per-bucket lookup scripts: integer and other uids,
    recorded on different days (the later day of a re-recorded user wins), and never recorded."""
    from c2b.delivery.contacts import contacted_since_array
    from c2b.delivery.history_snapshot import MIN_BATCH, HistoryLookup
    from c2b.delivery.reentry import BUCKETS, bucket_key

    ints = [str(1_000_000 + 7 * i) for i in range(MIN_BATCH)]
    texts = [f"user-{i}" for i in range(MIN_BATCH // 2)] + ["-42", "007", "é"]
    everyone = ints + texts
    record_contacts(redis_client, everyone[::3], NOW - timedelta(days=10))
    record_contacts(redis_client, everyone[1::3], NOW - timedelta(days=2))
    record_contacts(redis_client, everyone[::6], NOW - timedelta(days=1))  # later than day -10: wins
    batch = pa.array(everyone + [str(9_000_000 + i) for i in range(500)])  # the last 500 never recorded
    since = NOW - timedelta(days=5)
    expected = contacted_since_array(redis_client, batch, since)
    lookup = HistoryLookup(redis_client)
    got = lookup.matches(batch, since)
    assert lookup.snapshot is not None and lookup.snapshot.size == len(everyone) - len(everyone[2::3])
    assert got.tolist() == expected.tolist()
    recent = set(range(1, len(everyone), 3)) | set(range(0, len(everyone), 6))  # days -2 and -1
    assert sorted(map(int, got.nonzero()[0])) == sorted(recent)
    # a small batch keeps the per-bucket scripts; a plan's own history (re-entry keys) works the same
    small = pa.array(everyone[:10])
    assert HistoryLookup(redis_client).matches(small, since).tolist() == expected[:10].tolist()
    record_contacts(redis_client, ints, NOW - timedelta(days=1), key_of=lambda b: bucket_key("p1", b), buckets=BUCKETS)
    own = HistoryLookup(redis_client, key_of=lambda b: bucket_key("p1", b), buckets=BUCKETS)
    assert own.matches(batch, since).tolist() == [True] * len(ints) + [False] * (len(batch) - len(ints))
