"""The shard store on a real standalone redis-server: round trips, resume, bounds, TTLs, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from c2b.store.shards import (
    ShardKeys,
    StoreError,
    drop_run,
    inspect_run,
    load_shards,
    meta_key,
    read_attrs,
    read_layout,
    read_page,
)
from c2b.store.sizing import ShardCountError
from store_cases import assert_resume, assert_round_trip, page_through, staging

INTS = [str(i) for i in range(1_000_000, 1_020_000)] + ["0", "-42", "9223372036854775807"]
TEXTS = [f"u-{i}" for i in range(20_000)] + ["日本", "ü", "a" * 128]


@pytest.mark.parametrize(("uids", "encoding", "expect"), [
    (INTS, "auto", "packed"), (INTS, "zset", "zset"), (TEXTS, "auto", "zset"),
    (["7", "007", "8"], "auto", "zset"),  # "007" is not canonical: it would come back as "7"
])
def test_load_and_page_through_reads_every_uid_once(redis_client, tmp_path: Path, uids, encoding, expect) -> None:
    assert_round_trip(redis_client, tmp_path, uids, encoding, expect)


@pytest.mark.parametrize("encoding", ["packed", "zset"])
def test_resume_from_cursor_reads_the_rest_once(redis_client, tmp_path: Path, encoding: str) -> None:
    assert_resume(redis_client, tmp_path, INTS[:5000], encoding)


def test_every_key_has_a_ttl_and_attributes_round_trip(redis_client, tmp_path: Path) -> None:
    uids = INTS[:3000]
    path = staging(tmp_path / "a.parquet", uids, nickname=[f"n{u}" for u in uids], score=list(range(3000)))
    result = load_shards(redis_client, path, "plan_ttl", "run-1", 8, attr_columns=["nickname", "score"],
                         ttl_seconds=3600)
    keys = [k.decode() for k in redis_client.scan_iter("c2b:*")]
    assert len(keys) == 1 + 2 * len(result.non_empty)  # meta + packed + attrs per shard
    assert all(0 < redis_client.ttl(k) <= 3600 for k in keys)
    s = result.non_empty[0]
    page = read_page(redis_client, ShardKeys("plan_ttl", "run-1", s), 0, 5)
    assert read_layout(redis_client, "plan_ttl", "run-1")["attr_parts"] == 1  # 375 a shard: one sub-key
    assert read_attrs(redis_client, ShardKeys("plan_ttl", "run-1", s), page, 1) == [
        {"nickname": f"n{u}", "score": int(u) - 1_000_000} for u in page]
    check = inspect_run(redis_client, "plan_ttl", "run-1")
    assert check.problems == []
    assert check.largest_by_members.members == result.largest


def test_too_small_shard_count_is_refused_before_writing(redis_client, tmp_path: Path) -> None:
    path = staging(tmp_path / "big.parquet", INTS)
    with pytest.raises(ShardCountError, match=r"delivery.shards: 2 would put .* use shards: 4"):
        load_shards(redis_client, path, "plan_big", "run-1", 2, max_shard_members=6000)
    assert redis_client.dbsize() == 0, "nothing written"
    result = load_shards(redis_client, path, "plan_big", "run-1", "auto", max_shard_members=6000)
    assert result.shard_count == 4 and result.largest <= 6000
    assert read_layout(redis_client, "plan_big", "run-1")["shards"] == 4


def test_packed_is_refused_for_text_uids(redis_client, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="encoding: packed needs canonical integer uids"):
        load_shards(redis_client, staging(tmp_path / "t.parquet", TEXTS), "plan_t", "run-1", 4, encoding="packed")


def test_reload_of_same_file_is_a_no_op_and_a_new_file_rebuilds(redis_client, tmp_path: Path) -> None:
    path = staging(tmp_path / "s.parquet", INTS[:4000])
    first = load_shards(redis_client, path, "plan_re", "run-1", 4)
    ckpt = ShardKeys("plan_re", "run-1", first.non_empty[0]).checkpoint
    redis_client.hset(ckpt, "next", 100)
    again = load_shards(redis_client, path, "plan_re", "run-1", 4)
    assert again.reused and again.shards == first.shards
    assert redis_client.hget(ckpt, "next") == b"100", "positions unchanged, so the checkpoint stays"

    staging(path, INTS[:3000] + [f"x{i}" for i in range(500)])  # extract ran again: other users
    rebuilt = load_shards(redis_client, path, "plan_re", "run-1", 4)
    assert not rebuilt.reused and rebuilt.encoding == "zset" and rebuilt.members == 3500
    assert not redis_client.exists(ckpt), "positions changed, so the old checkpoint is dropped"
    assert not any(k.endswith(b":pk") for k in redis_client.scan_iter("c2b:*")), "old encoding's keys gone"
    assert len(page_through(redis_client, "plan_re", "run-1", rebuilt.non_empty, 100)) == 3500


@pytest.mark.parametrize("encoding", ["packed", "zset"])
def test_drop_run_drops_every_run_key_but_the_ledger(redis_client, tmp_path: Path, encoding: str) -> None:
    path = staging(tmp_path / "d.parquet", INTS[:2000], nickname=["n"] * 2000)
    result = load_shards(redis_client, path, "plan_d", "run-1", "auto", attr_columns=["nickname"],
                         max_shard_members=300, encoding=encoding)
    keys = ShardKeys("plan_d", "run-1", result.non_empty[-1])
    redis_client.hset(keys.checkpoint, "next", 1)
    redis_client.hset(keys.ledger, "t|1", "s")
    dropped = drop_run(redis_client, "plan_d", "run-1")  # shard count comes from the run's meta
    assert dropped == 1 + 2 * len(result.non_empty) + 1
    assert [k.decode() for k in redis_client.scan_iter("c2b:*")] == [keys.ledger]


@pytest.mark.parametrize("encoding", ["packed", "zset"])
@pytest.mark.parametrize("column_wise", [True, False])
def test_attrs_split_into_sub_keys_of_the_shard_slot(redis_client, tmp_path: Path, encoding: str,
                                                     column_wise: bool) -> None:
    """A shard's attributes go to S sub-keys (S from the largest shard), both write paths agree with
    read_attrs, a reused load keeps them, drop_run deletes them all."""
    uids = INTS[:8000]
    cols: dict = {"nickname": [f"n{u}" for u in uids]}
    if not column_wise:
        cols["w"] = [0.5] * len(uids)  # a float: the row-by-row path
    path = staging(tmp_path / "p.parquet", uids, **cols)
    load = lambda: load_shards(redis_client, path, "plan_p", "run-1", 2, attr_columns=list(cols),  # noqa: E731
                               encoding=encoding, attr_part_fields=500, batch_rows=3000)
    result = load()
    layout = read_layout(redis_client, "plan_p", "run-1")
    parts = layout["attr_parts"]
    assert parts >= 8 and result.largest <= parts * 500 < 2 * result.largest  # ~4,000 a shard -> 8 x ~500
    sub_keys = sorted(k.decode() for k in redis_client.scan_iter("c2b:*:attrs*"))
    assert sub_keys == sorted(k for s in (1, 2) for k in ShardKeys("plan_p", "run-1", s).attr_keys(parts))
    sizes = [redis_client.hlen(k) for k in sub_keys]
    assert sum(sizes) == len(uids) and max(sizes) <= 650 and min(sizes) >= 150, sizes
    assert all(0 < redis_client.ttl(k) for k in sub_keys)

    def check() -> None:
        for s in (1, 2):
            keys = ShardKeys("plan_p", "run-1", s)
            page = read_page(redis_client, keys, 0, result.shards[s])
            got = read_attrs(redis_client, keys, [*page, "404"], parts)
            want = [{"nickname": f"n{u}", **({} if column_wise else {"w": 0.5})} for u in page]
            assert got == [*want, {}]

    check()
    assert load().reused
    check()
    dropped = drop_run(redis_client, "plan_p", "run-1")
    assert dropped == 1 + 2 + len(sub_keys)  # meta, the shards' uids, every attrs sub-key
    assert list(redis_client.scan_iter("c2b:*")) == []


def test_empty_audience_loads_nothing(redis_client, tmp_path: Path) -> None:
    result = load_shards(redis_client, staging(tmp_path / "e.parquet", []), "plan_e", "run-1", "auto")
    assert result.non_empty == [] and result.members == 0
    assert redis_client.ttl(meta_key("plan_e", "run-1")) > 0


def test_braces_in_a_run_id_do_not_break_the_hash_tag() -> None:
    k = ShardKeys("p", "manual__{x}", 3)
    assert k.audience == "c2b:{p:manual__%7Bx%7D:3}:aud"
    assert meta_key("p", "a}b") == "c2b:{p:a%7Db}:meta"


def test_store_check_cli_reports_the_largest_key(redis_server, redis_client, tmp_path: Path, capsys,
                                                 monkeypatch) -> None:
    from c2b.cli import main

    monkeypatch.setenv("C2B_REDIS_URL", redis_server.url)
    load_shards(redis_client, staging(tmp_path / "c.parquet", INTS[:5000]), "plan_c", "run-1", 8)
    assert main(["store-check", "plan_c", "run-1"]) == 0
    out = capsys.readouterr().out
    assert "encoding packed, 8 shards, 5000 members" in out and "largest key by memory :" in out
    assert main(["store-check", "plan_c", "run-1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["largest_by_members"]["key"].endswith(":pk") and report["problems"] == []
    redis_client.persist(meta_key("plan_c", "run-1"))
    assert main(["store-check", "plan_c", "run-1"]) == 1
    assert "has no TTL" in capsys.readouterr().out


def test_runtime_load_and_cleanup_with_auto_shards(redis_client, tmp_path: Path) -> None:
    from c2b import steps
    from c2b.plan.load import parse_plan

    plan = parse_plan({"id": "plan_auto", "audience": {"segment": "x.sql"},
                       "touches": [{"name": "t", "channel": "outbox", "template": "hi {{ nickname }}"}],
                       "delivery": {"shards": "auto", "max_shard_members": 1500, "key_ttl_hours": 1}}, "plan_auto.yaml")
    uids = INTS[:10_000]
    path = staging(tmp_path / "r.parquet", uids, nickname=["n"] * len(uids))
    shards = steps.step_load(plan, "run-1", redis_client, {"path": str(path), "counts": {"kept": len(uids)}})
    assert read_layout(redis_client, "plan_auto", "run-1")["shards"] == 8 and shards == list(range(1, 9))
    assert all(0 < redis_client.ttl(k) <= 3600 for k in redis_client.scan_iter("c2b:*"))
    with pytest.raises(RuntimeError, match="extract kept 5 users"):
        steps.step_load(plan, "run-1", redis_client, {"path": str(path), "counts": {"kept": 5}})
    assert steps.step_cleanup(plan, "run-1", redis_client) == 1 + 8 * 2
    assert redis_client.dbsize() == 0
