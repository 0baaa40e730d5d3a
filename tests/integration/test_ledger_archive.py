"""A run's ledger leaves Redis at cleanup and comes back when the run is cleared (issue #13 item 7).

On a real redis-server, the run's files on the real local storage, a gateway that counts every
request it receives: ``step_cleanup`` moves every ledger key to ``ledgers/<plan>/<run>.ledger``
and leaves none of the run's keys in Redis; a cleared run (extract and load again, users in
another order) gets its ledger back at ``load_shards`` and sends nobody twice. Without the archive
the same re-run sends everything again (what the archive is for). A damaged archive stops the load
with the file's name; a key written after it was read stays in Redis; expired keys are not restored.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devtools.deliverkit import expected_keys, make_plan, plan_dict
from devtools.gateway import Gateway

USERS = [str(7_000_000 + 13 * i) for i in range(500)] + [f"user-{i}" for i in range(100)]


def _plan():  # -> Plan
    return make_plan(plan_dict("p_archive", touches=2, shards=4, page_size=40, concurrency=8))


def _extract(plan, run_id: str, users: list[str]) -> dict:
    from c2b import steps

    path = steps.staging_path(plan, run_id)
    Path(str(path.path)).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": users}), str(path.path))
    return {"path": str(path), "counts": {"kept": len(users)}}


def _deliver(redis_client, plan, run_id: str, shards: list[int], gw: Gateway) -> dict[str, int]:
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel

    counts: dict[str, int] = {}
    for shard in shards:
        channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, conn_id="c_push", redis=redis_client))
                    for t in plan.touches}
        stats = steps.step_deliver(plan, run_id, shard, redis_client, channels, lambda: False)
        for k, n in stats["counts"].items():
            counts[k] = counts.get(k, 0) + n
    return counts


def _run_keys(redis_client, plan, run_id: str) -> list[str]:
    return sorted(k.decode() for k in redis_client.scan_iter(match=f"c2b:{{{plan.id}:{run_id}*", count=1000))


def test_cleanup_moves_the_ledger_out_of_redis_and_a_cleared_rerun_sends_nobody_twice(c2b_env: Path,
                                                                                       redis_client) -> None:
    from c2b import steps
    from c2b.delivery.ledger_archive import archive_path

    plan = _plan()
    shards = steps.all_shards(steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS)))
    with Gateway() as gw:
        first = _deliver(redis_client, plan, "r1", shards, gw)
        assert set(gw.record.accepted) == expected_keys(plan, "r1", USERS) and gw.record.duplicates == 0
    assert sum(first.values()) == 2 * len(USERS)
    assert any(k.endswith(":codes") for k in _run_keys(redis_client, plan, "r1"))

    steps.step_cleanup(plan, "r1", redis_client)
    assert _run_keys(redis_client, plan, "r1") == [], "cleanup left keys of the run in Redis"
    archive = Path(str(archive_path(plan.id, "r1").path))
    assert archive.stat().st_size > 10 * len(USERS)

    # Cleared: extract and load again (another order, so other positions), deliver every shard.
    assert steps.all_shards(steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[::-1]))) == shards
    with Gateway() as gw:
        again = _deliver(redis_client, plan, "r1", shards, gw)
        assert gw.record.requests == 0, f"the cleared run sent {len(gw.record.accepted)} messages again"
    assert again == first  # the totals are the first attempt's, read from the restored ledger

    # Cleaned up again (the union is archived), then the archive is lost: the same re-run sends
    # every message again. This is what the archive prevents (and shows this test can fail).
    steps.step_cleanup(plan, "r1", redis_client)
    assert _run_keys(redis_client, plan, "r1") == [] and archive.exists()
    archive.unlink()
    steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS))
    with Gateway() as gw:
        _deliver(redis_client, plan, "r1", shards, gw)
        assert len(gw.record.accepted) == 2 * len(USERS)


def test_a_damaged_archive_stops_the_load_and_names_the_file(c2b_env: Path, redis_client) -> None:
    from c2b import steps
    from c2b.delivery.ledger_archive import LedgerArchiveError, archive_path
    from c2b.store.shards import read_layout

    plan = _plan()
    shards = steps.all_shards(steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[:100])))
    with Gateway() as gw:
        _deliver(redis_client, plan, "r1", shards, gw)
    steps.step_cleanup(plan, "r1", redis_client)
    archive = Path(str(archive_path(plan.id, "r1").path))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(LedgerArchiveError, match=r"p_archive/r1\.ledger is not a whole ledger archive.*Restore"):
        steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[:100]))
    assert read_layout(redis_client, plan.id, "r1") is None, "nothing was loaded: no deliver task can start"


def test_a_key_written_after_it_was_read_stays_and_expired_keys_are_not_restored(c2b_env: Path,
                                                                                 redis_client) -> None:
    import time

    from c2b import storage
    from c2b.delivery.ledger_archive import (
        ArchivedKey,
        archive_ledgers,
        archive_path,
        delete_archived,
        dump_keys,
        encode,
        read_archive,
        restore_ledgers,
    )

    redis_client.hset("c2b:{p_archive:r1:1}:codes", "#nb", 0)
    redis_client.expire("c2b:{p_archive:r1:1}:codes", 3600)
    redis_client.hset("c2b:{p_archive:r1:1}:stats", "all|t0|sent", 1)
    dumped = dump_keys(redis_client, ["c2b:{p_archive:r1:1}:codes", "c2b:{p_archive:r1:1}:stats",
                                      "c2b:{p_archive:r1:1}:ledger"])
    assert [k.name for k in dumped] == ["c2b:{p_archive:r1:1}:codes", "c2b:{p_archive:r1:1}:stats"]
    assert dumped[0].expire_at_ms > time.time() * 1000 and dumped[1].expire_at_ms == -1
    redis_client.hincrby("c2b:{p_archive:r1:1}:stats", "all|t0|sent", 1)  # a late outcome, after the read
    assert delete_archived(redis_client, dumped) == 1
    assert redis_client.hget("c2b:{p_archive:r1:1}:stats", "all|t0|sent") == b"2", "the newer key stays"
    assert not redis_client.exists("c2b:{p_archive:r1:1}:codes")

    # An archive with a key past its expiry, one still valid, and one whose key exists in Redis.
    now = int(time.time() * 1000)
    keys = [ArchivedKey("c2b:{p_archive:r1:2}:codes", now - 1, dumped[0].payload),
            ArchivedKey("c2b:{p_archive:r1:3}:codes", now + 60_000, dumped[0].payload),
            ArchivedKey("c2b:{p_archive:r1:1}:stats", -1, dumped[1].payload)]
    storage.write_bytes(archive_path("p_archive", "r1"), encode("p_archive", "r1", keys, now))
    assert restore_ledgers(redis_client, "p_archive", "r1") == 1
    assert not redis_client.exists("c2b:{p_archive:r1:2}:codes")
    assert redis_client.hget("c2b:{p_archive:r1:3}:codes", "#nb") == b"0"
    assert 0 < redis_client.pttl("c2b:{p_archive:r1:3}:codes") <= 60_000
    assert redis_client.hget("c2b:{p_archive:r1:1}:stats", "all|t0|sent") == b"2"

    # The next archive of the run keeps what Redis has lost meanwhile (and has not expired).
    redis_client.delete("c2b:{p_archive:r1:3}:codes")
    redis_client.hset("c2b:{p_archive:r1:1}:codes", "#nb", 0)
    result = archive_ledgers(redis_client, "p_archive", "r1", [1])
    assert result is not None and result.deleted == 2 and result.kept == 0
    names = {k.name: k for k in read_archive(archive_path("p_archive", "r1"))}
    assert set(names) == {"c2b:{p_archive:r1:1}:codes", "c2b:{p_archive:r1:1}:stats", "c2b:{p_archive:r1:3}:codes"}
    assert archive_ledgers(redis_client, "p_archive", "r1", [1]) is None, "nothing in Redis: the file stays"
    assert len(read_archive(archive_path("p_archive", "r1"))) == 3


def test_archives_go_once_their_keys_would_have_expired(c2b_env: Path) -> None:
    import os
    import time

    from c2b import storage
    from c2b.delivery.ledger import LEDGER_TTL
    from c2b.delivery.ledger_archive import archive_path, purge_archives

    old, new = archive_path("p_archive", "r-old"), archive_path("p_archive", "r-new")
    for path in (old, new):
        storage.write_bytes(path, b"x")
    past = time.time() - LEDGER_TTL - 60
    os.utime(str(old.path), (past, past))
    assert purge_archives("p_archive") == 1
    assert not storage.exists(old) and storage.exists(new)


def test_the_runs_ledger_shards_are_listed_without_scanning_and_found_by_scan_for_older_runs(
        c2b_env: Path, redis_client, monkeypatch: pytest.MonkeyPatch) -> None:
    from c2b import steps
    from c2b.delivery.ledger import ledger_shards_key
    from c2b.delivery.ledger_archive import ledger_shards

    plan = _plan()
    shards = steps.all_shards(steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[:200])))
    with Gateway() as gw:
        _deliver(redis_client, plan, "r1", shards, gw)
    listed = ledger_shards(redis_client, plan.id, "r1")
    assert listed == shards and redis_client.ttl(ledger_shards_key(plan.id, "r1")) > 0
    # A run whose ledgers were written before the set existed: one SCAN finds the same shards.
    redis_client.delete(ledger_shards_key(plan.id, "r1"))
    assert ledger_shards(redis_client, plan.id, "r1") == listed
    # With the set, cleanup does not scan the keyspace (its cost grows with every key of the store).
    redis_client.sadd(ledger_shards_key(plan.id, "r1"), *listed)

    def no_scan(*args, **kwargs):
        raise AssertionError("cleanup scanned the keyspace")

    monkeypatch.setattr(type(redis_client), "scan_iter", no_scan)
    steps.step_cleanup(plan, "r1", redis_client)
    monkeypatch.undo()
    assert _run_keys(redis_client, plan, "r1") == []


def test_a_budgets_reservations_go_with_the_ledger_and_come_back(c2b_env: Path, redis_client) -> None:
    from c2b import steps
    from c2b.delivery.controls.budget import run_budget_keys

    data = plan_dict("p_archive", touches=1, shards=2, page_size=40, concurrency=8)
    data["touches"][0]["offer"]["budget"] = {"coupons": 150}  # fewer than the audience: the budget runs out
    plan = make_plan(data)
    counter = f"c2b:budget:{{{plan.id}:t0:r1}}:n"
    assert run_budget_keys(plan, "r1") == [f"c2b:budget:{{{plan.id}:t0:r1}}:r:r1:1"]
    shards = steps.all_shards(steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[:300])))
    with Gateway() as gw:
        first = _deliver(redis_client, plan, "r1", shards, gw)
        assert len(gw.record.accepted) == 150
    spent = redis_client.hgetall(counter)
    assert int(spent[b"coupons"]) == 150 and first.get("all|t0|budget_exhausted") == 150

    steps.step_cleanup(plan, "r1", redis_client)
    assert [k.decode() for k in redis_client.scan_iter(match="c2b:budget:*")] == [counter], \
        "the reservations left Redis, the counter (read by report) stays"
    steps.step_load(plan, "r1", redis_client, _extract(plan, "r1", USERS[:300][::-1]))
    assert redis_client.hgetall(counter) == spent, "the cleared run finds its budget spent"
    assert redis_client.scard(f"c2b:budget:{{{plan.id}:t0:r1}}:r:r1:1") == 150, "and who holds its coupons"
    with Gateway() as gw:
        again = _deliver(redis_client, plan, "r1", shards, gw)
        assert gw.record.requests == 0
    assert again == first
