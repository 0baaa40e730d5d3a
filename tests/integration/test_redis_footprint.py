"""No big keys in a run, and a few bytes per member left behind (issue #13 item 7).

A real run of 20k users on a real redis-server, step by step as the DAG runs it (load, deliver
every shard, cleanup), with small shards (``max_shard_members: 4000``) so the audience keys are
small by the loader's own bound. What the ledger adds must stay small whatever the shard size:
no key of the run grows with the shard (the ledger hash only holds what is still in flight), and
after cleanup the run's own keys (ledger, outcome records, stats) hold under 16 bytes per member.
Then the same run is cleared and run again on a fresh load, as Airflow does after a cleanup: the
outcome records answer by uid, so nothing is sent twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from devtools.deliverkit import ledger_entries, make_plan
from devtools.footprint import CROSS_RUN, measure

USERS = 20_000
MAX_SHARD = 4000
ATTR_CHUNK = 500  # members per attrs chunk (production: 1,024): a shard's ~2,500 in 5 chunks


def _plan(tmp: Path):  # -> Plan
    return make_plan({
        "id": "p_footprint", "audience": {"segment": "x.sql"},
        "touches": [{"name": "a", "channel": "outbox", "template": "Hi {{ nickname }}"},
                    {"name": "b", "channel": "outbox", "template": "Again {{ uid }}"}],
        "experiment": {"salt": "s", "variants": {"one": {"weight": 45, "touches": ["a"]},
                                                 "two": {"weight": 45, "touches": ["a", "b"]},
                                                 "ctl": {"weight": 10, "control": True}}},
        "delivery": {"shards": "auto", "page_size": 200, "concurrency": 8, "max_shard_members": MAX_SHARD}})


def _load(redis_client, plan, run_id: str, uids: list[str], folder: Path) -> dict[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from c2b.store.shards import load_shards

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": uids, "nickname": [f"nick-{u}" for u in uids]}), folder / "staging.parquet")
    return load_shards(redis_client, folder / "staging.parquet", plan.id, run_id, plan.delivery.shards,
                       ["nickname"], max_shard_members=plan.delivery.max_shard_members,
                       attr_chunk=ATTR_CHUNK).shards


def _deliver_all(redis_client, plan, run_id: str, shards: list[int], outbox: Path) -> int:
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel

    sent = 0
    for shard in shards:
        channels = {t.name: make_channel(t.channel, ChannelConfig(run_dir=str(outbox))) for t in plan.touches}
        stats = steps.step_deliver(plan, run_id, shard, redis_client, channels, lambda: False)
        sent += sum(n for k, n in stats["counts"].items() if k.endswith("|sent"))
    return sent


def _largest(snapshot: dict, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    fams = [f for name, f in snapshot["families"].items() if name not in skip]
    return (max(f["largest_bytes"]["bytes"] for f in fams), max(f["largest_elements"]["elements"] for f in fams))


def test_a_run_leaves_no_big_key_and_under_16_bytes_per_member(redis_client, tmp_path: Path) -> None:
    from c2b.store.shards import drop_run

    plan = _plan(tmp_path)
    users = [str(10_000_000 + 7 * i) for i in range(USERS)]
    loaded = _load(redis_client, plan, "r1", users, tmp_path / "staging")
    shards = sorted(s for s, n in loaded.items() if n)
    assert len(shards) >= USERS // MAX_SHARD and max(loaded.values()) <= MAX_SHARD
    sent = _deliver_all(redis_client, plan, "r1", shards, tmp_path / "outbox")
    assert sent > USERS  # two touches for some: the run really sent
    msgs = [json.loads(line) for p in (tmp_path / "outbox").glob("*") for line in p.read_text().splitlines()]
    firsts = [m for m in msgs if m["touch"] == "a"]
    assert len(firsts) > USERS // 2 and all(m["text"] == f"Hi nick-{m['uid']}" for m in firsts), \
        "every user's attributes read back from its chunk"

    delivered = measure(redis_client)
    fams = delivered["families"]
    # The template attributes are stored in chunks of ATTR_CHUNK members (one hash per shard before:
    # every member of the shard, 5 MB / 63k fields at 1M users in 16 shards), ~17 bytes a member here.
    assert fams["attrs"]["keys"] >= 4 * len(shards), fams["attrs"]
    assert fams["attrs"]["largest_bytes"]["bytes"] <= 64 * ATTR_CHUNK, fams["attrs"]
    assert fams["attrs"]["bytes"] <= 32 * USERS, fams["attrs"]
    # The audience keys are bounded by max_shard_members (the loader's rule); everything else the run
    # wrote stays far below a shard's size: the old ledger hash held every (touch, uid) of its shard.
    audience = ("audience_packed", "audience_zset", "meta")
    run_bytes, run_elements = _largest(delivered, skip=audience + CROSS_RUN)
    assert run_elements <= MAX_SHARD // 4 and run_bytes <= 64 * 1024, {
        k: (v["largest_bytes"], v["largest_elements"]) for k, v in fams.items()}
    # The main pass's records: one string per page (200 users x 10 bytes here, ~9 KB at 1,000).
    assert fams["ledger_pages"]["largest_bytes"]["bytes"] <= 4096
    assert "ledger_records" not in fams or fams["ledger_records"]["largest_bytes"]["bytes"] <= 4096
    everything_bytes, everything_elements = _largest(delivered)
    assert everything_bytes < 1 << 20 and everything_elements <= 10_000

    drop_run(redis_client, plan.id, "r1")
    after = measure(redis_client)
    own = sum(f["bytes"] for name, f in after["families"].items() if name not in CROSS_RUN)
    assert own / USERS < 16, {k: v["bytes"] / USERS for k, v in after["families"].items()}
    assert not {"audience_packed", "attrs", "ckpt", "receipts", "meta"} & set(after["families"])
    assert all(f["max_ttl"] > 0 for f in after["families"].values()), "every key left behind expires"

    # The run is cleared and re-run after its cleanup: a new load (other positions), the same users.
    before = {f: st for f, st in ledger_entries(redis_client, plan, "r1", users[:500]).items()}
    assert before and set(before.values()) == {"s"}
    reloaded = _load(redis_client, plan, "r1", list(reversed(users)), tmp_path / "staging2")
    assert reloaded == loaded
    assert _deliver_all(redis_client, plan, "r1", shards, tmp_path / "outbox2") == sent  # the totals
    outbox2 = list((tmp_path / "outbox2").glob("*"))
    assert sum(len(p.read_text().splitlines()) for p in outbox2) == 0, "the re-run sent something again"
