"""The shard store on a real standalone redis-server: round trips, resume, bounds, TTLs, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from c2b.store.shards import (
    FORMAT,
    AttrReader,
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
    layout = read_layout(redis_client, "plan_ttl", "run-1")
    assert layout["attr_chunk"] == 1024  # ~375 a shard: one chunk each
    assert read_attrs(redis_client, ShardKeys("plan_ttl", "run-1", s), 0, 5, layout) == [
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


@pytest.mark.parametrize(("uids", "encoding"), [(INTS[:8000], "packed"), (INTS[:8000], "zset"),
                                              (TEXTS[:7990] + TEXTS[-3:], "zset")])
@pytest.mark.parametrize("column_wise", [True, False])
def test_attrs_in_position_chunks_line_up_with_the_pages(redis_client, tmp_path: Path, uids: list[str],
                                                         encoding: str, column_wise: bool) -> None:
    """Chunk c of a shard holds the attributes of ranks [c*C, (c+1)*C) in read_page's order, for
    both encodings (zset: text uids of mixed lengths too), shards whose size is no multiple of C,
    chunks filled across batches; by position and by uid; a reused load keeps them, drop_run
    deletes them all."""
    cols: dict = {"nickname": [f"n{u}" for u in uids]}
    if not column_wise:
        cols["w"] = [len(u) + 0.5 for u in uids]  # a float: encoded value by value
    path = staging(tmp_path / "p.parquet", uids, **cols)
    load = lambda: load_shards(redis_client, path, "plan_p", "run-1", 2, attr_columns=list(cols),  # noqa: E731
                               encoding=encoding, attr_chunk=500, batch_rows=3000)
    result = load()
    assert result.encoding == encoding
    layout = read_layout(redis_client, "plan_p", "run-1")
    assert layout["format"] == FORMAT and layout["attr_chunk"] == 500
    assert all(n % 500 for n in result.shards.values()), "a partial last chunk in every shard"
    chunk_keys = sorted(k.decode() for k in redis_client.scan_iter("c2b:*:attrs*"))
    assert chunk_keys == sorted(k for s in (1, 2) for k in ShardKeys("plan_p", "run-1", s).attr_keys(
        -(-result.shards[s] // 500)))
    assert all(0 < redis_client.ttl(k) for k in chunk_keys)
    assert max(redis_client.strlen(k) for k in chunk_keys) < 64 * 1024

    def want(u: str) -> dict:
        return {"nickname": f"n{u}", **({} if column_wise else {"w": len(u) + 0.5})}

    def check() -> None:
        for s in (1, 2):
            keys = ShardKeys("plan_p", "run-1", s)
            members = read_page(redis_client, keys, 0, result.shards[s])
            reader = AttrReader(redis_client, keys, layout)
            for start, n in [(0, 1000), (1000, 1000), (499, 2), (1, 498), (0, result.shards[s] + 10),
                             (result.shards[s] - 3, 100)]:  # pages across chunk edges, past the end
                page = read_page(redis_client, keys, start, n)
                assert page == members[start:start + n]
                assert reader.page(start, n) == [want(u) for u in page]
                assert read_attrs(redis_client, keys, start, n, layout) == [want(u) for u in page]
            mixed = members[::-7] + ["404"]  # the deferred pass: any order, and a uid not in the shard
            assert reader.by_uid(mixed) == [*(want(u) for u in mixed[:-1]), {}]

    check()
    assert load().reused
    check()
    dropped = drop_run(redis_client, "plan_p", "run-1")
    assert dropped == 1 + 2 + len(chunk_keys)  # meta, the shards' uids, every attrs chunk
    assert list(redis_client.scan_iter("c2b:*")) == []


def test_attrs_round_trip_every_staging_type_as_json_did(redis_client, tmp_path: Path) -> None:
    """Text (with control characters too), ints, floats, bools, None, timestamps, dates, decimals:
    what comes back is what a JSON round trip with ``default=str`` gives (format 2 stored that)."""
    import datetime as dt
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500
    table = pa.table({
        "uid": [str(5_000_000 + i) for i in range(n)],
        "nickname": [None if i % 11 == 0 else f"n\"{i}\n\t\u00e9\U0001F600" for i in range(n)],
        "age": pa.array([None if i % 13 == 0 else i - 1000 for i in range(n)], pa.int32()),
        "ratio": [None if i % 7 == 0 else i / 3 for i in range(n)],
        "vip": [None if i % 5 == 0 else i % 2 == 0 for i in range(n)],
        "seen": pa.array([dt.datetime(2026, 1, 1) + dt.timedelta(seconds=37 * i) for i in range(n)],
                         pa.timestamp("us", "UTC")),
        "day": [dt.date(2026, 1, 1) + dt.timedelta(days=i % 300) for i in range(n)],
        "price": pa.array([decimal.Decimal(i) / 4 for i in range(n)], pa.decimal128(10, 2)),
    })
    path = tmp_path / "types.parquet"
    pq.write_table(table, path)
    columns = [c for c in table.column_names if c != "uid"]
    result = load_shards(redis_client, path, "plan_ty", "run-1", 4, attr_columns=columns, attr_chunk=300,
                         batch_rows=700)
    rows = {r["uid"]: {c: r[c] for c in columns} for r in table.to_pylist()}
    layout = read_layout(redis_client, "plan_ty", "run-1")
    for s in result.non_empty:
        keys = ShardKeys("plan_ty", "run-1", s)
        page = read_page(redis_client, keys, 0, result.shards[s])
        got = read_attrs(redis_client, keys, 0, len(page), layout)
        assert got == [json.loads(json.dumps(rows[u], default=str)) for u in page]


def test_a_reader_refuses_missing_or_foreign_state(redis_client, tmp_path: Path) -> None:
    """No meta, a meta of another format, a load not complete, a chunk gone: errors, never {}."""
    path = staging(tmp_path / "m.parquet", INTS[:3000], nickname=["n"] * 3000)
    load_shards(redis_client, path, "plan_m", "run-1", 1, attr_columns=["nickname"], attr_chunk=1000)
    keys = ShardKeys("plan_m", "run-1", 1)
    layout = read_layout(redis_client, "plan_m", "run-1")
    assert read_attrs(redis_client, keys, 2990, 20, layout) == [{"nickname": "n"}] * 10
    with pytest.raises(StoreError, match="no meta key"):
        AttrReader(redis_client, keys, None)
    with pytest.raises(StoreError, match="store format '2'.* load the run again"):
        AttrReader(redis_client, keys, {**layout, "format": "2", "attr_parts": 4})
    with pytest.raises(StoreError, match="load state is 'loading'"):
        AttrReader(redis_client, keys, {**layout, "state": "loading"})
    redis_client.delete(keys.attrs(1))
    reader = AttrReader(redis_client, keys, layout)
    assert reader.page(0, 1000) == [{"nickname": "n"}] * 1000
    with pytest.raises(StoreError, match=r"attrs:c1 is missing"):
        reader.page(999, 2)
    with pytest.raises(StoreError, match=r"attrs:c1 is missing"):
        reader.by_uid(read_page(redis_client, keys, 1500, 1))
    assert "1 attribute chunk(s) missing" in inspect_run(redis_client, "plan_m", "run-1").problems[0]
    redis_client.set(keys.attrs(1), b'[["n"]]')
    with pytest.raises(StoreError, match="does not hold 1000 rows"):
        AttrReader(redis_client, keys, layout).page(1000, 5)


def test_drop_run_finds_attribute_chunks_without_a_meta_and_old_format_hashes(redis_client, tmp_path: Path) -> None:
    path = staging(tmp_path / "g.parquet", INTS[:3000], nickname=["n"] * 3000)
    result = load_shards(redis_client, path, "plan_g*", "run-[1]", 2, attr_columns=["nickname"], attr_chunk=100)
    load_shards(redis_client, path, "plan_g", "run-1", 2, attr_columns=["nickname"], attr_chunk=100)
    redis_client.delete(meta_key("plan_g*", "run-[1]"))  # the meta expired first
    chunks = sum(-(-n // 100) for n in result.shards.values())
    assert chunks >= 30 and drop_run(redis_client, "plan_g*", "run-[1]", 2) == 2 + chunks  # the shards, every chunk
    others = sorted(redis_client.scan_iter("c2b:*"))
    assert others and all(b"{plan_g:run-1" in k for k in others), "another run's keys are kept"
    # A run loaded by format 2: attribute hashes attrs:<j>, attr_parts in the meta.
    old = ShardKeys("plan_o", "run-1", 1)
    redis_client.hset(meta_key("plan_o", "run-1"), mapping={"format": "2", "shards": 1, "attr_parts": 2,
                                                            "sizes": "[2]", "attrs": '["nickname"]'})
    redis_client.hset(old.legacy_attr_keys(2)[1], "1", '{"nickname": "n"}')
    assert drop_run(redis_client, "plan_o", "run-1") == 2


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
    sizes = read_layout(redis_client, "plan_auto", "run-1")["sizes"]
    chunks = sum(-(-n // 1024) for n in sizes)  # ~1,250 members a shard: two attribute chunks each
    assert chunks == 16 and steps.step_cleanup(plan, "run-1", redis_client) == 1 + 8 + chunks
    assert redis_client.dbsize() == 0
