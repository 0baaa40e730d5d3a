"""Every message renders its own user's attributes: the main pass reads them by position (the
page's chunks), the deferred pass by uid, for both shard encodings (real Redis, outbox channel).

2,500 users in one shard span three attribute chunks of 1,024 (the last one partial), so pages of
300 cross chunk edges; half the users wait for their local morning and are sent by the deferred
pass, in the order the ledger gives them, not the shard's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from c2b.channels import ChannelConfig, make_channel
from c2b.delivery.shard import ShardDelivery
from c2b.store.shards import StoreError, meta_key, read_layout

from devtools.deliverkit import load_audience, make_plan

USERS = 2500


def _plan(plan_id: str):  # -> Plan
    return make_plan({
        "id": plan_id, "audience": {"segment": "x.sql"},
        "window": {"send_hours": "09:00-21:00", "timezone": "Asia/Shanghai"},
        "touches": [{"name": "hi", "channel": "outbox", "template": "Hi {{ nickname }} ({{ age }}, {{ vip }})"}],
        "delivery": {"shards": 1, "page_size": 300, "concurrency": 8}})


def _texts(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in folder.glob("*"):
        for line in path.read_text().splitlines():
            m = json.loads(line)
            assert m["uid"] not in out, "sent once"
            out[m["uid"]] = m["text"]
    return out


@pytest.mark.parametrize(("uids", "encoding"), [([str(7_000_000 + 13 * i) for i in range(USERS)], "packed"),
                                                ([f"user-{i}" * (1 + i % 3) for i in range(USERS)], "zset")])
def test_main_and_deferred_pass_render_each_users_own_attributes(redis_client, tmp_path: Path, uids: list[str],
                                                                 encoding: str) -> None:
    plan = _plan(f"p_attrs_{encoding}")
    tzs = ["Europe/London" if i % 2 else "Asia/Shanghai" for i in range(USERS)]
    columns = {"nickname": [f"nick-{u}" for u in uids], "age": [i % 90 for i in range(USERS)],
               "vip": [i % 3 == 0 for i in range(USERS)], "timezone": tzs}
    load_audience(redis_client, plan, "r1", uids, tmp_path / "stage", columns)
    layout = read_layout(redis_client, plan.id, "r1")
    assert layout["encoding"] == encoding and layout["sizes"] == [USERS]
    want = {u: f"Hi nick-{u} ({i % 90}, {'True' if i % 3 == 0 else 'False'})" for i, u in enumerate(uids)}
    night = datetime(2026, 5, 6, 15, 30, tzinfo=UTC).timestamp()  # 23:30 in Shanghai, 16:30 in London
    morning = datetime(2026, 5, 7, 1, 0, 30, tzinfo=UTC).timestamp()  # 09:00:30 in Shanghai

    def deliver(clock: float, folder: Path) -> dict:
        channels = {t.name: make_channel(t.channel, ChannelConfig(run_dir=str(folder))) for t in plan.touches}
        delivery = ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False, clock=lambda: clock)
        return delivery.run(300, 8).to_xcom()

    first = deliver(night, tmp_path / "night")
    assert first["counts"] == {"all|hi|sent": USERS // 2, "all|hi|deferred": USERS // 2}
    sent = _texts(tmp_path / "night")
    assert sent == {u: t for u, t in want.items() if tzs[uids.index(u)] == "Europe/London"}
    second = deliver(morning, tmp_path / "morning")  # the deferred pass: by uid
    assert second["counts"] == {"all|hi|sent": USERS}
    later = _texts(tmp_path / "morning")
    assert later == {u: t for u, t in want.items() if tzs[uids.index(u)] == "Asia/Shanghai"}


def test_a_run_without_its_meta_or_of_an_older_format_fails_instead_of_sending_blank(redis_client,
                                                                                      tmp_path: Path) -> None:
    plan = _plan("p_attrs_meta")
    uids = [str(9_000_000 + i) for i in range(50)]
    load_audience(redis_client, plan, "r1", uids, tmp_path, {"nickname": ["n"] * 50, "age": [1] * 50,
                                                            "vip": [True] * 50})
    channels = {t.name: make_channel(t.channel, ChannelConfig(run_dir=str(tmp_path / "out"))) for t in plan.touches}
    morning = datetime(2026, 5, 7, 3, 0, tzinfo=UTC).timestamp()
    redis_client.hset(meta_key(plan.id, "r1"), "format", "2")
    with pytest.raises(StoreError, match="store format '2'"):
        ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False, clock=lambda: morning).run(50, 4)
    redis_client.delete(meta_key(plan.id, "r1"))
    with pytest.raises(StoreError, match="no meta key"):
        ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False, clock=lambda: morning).run(50, 4)
    assert not list((tmp_path / "out").glob("*")) or not any(p.read_text() for p in (tmp_path / "out").glob("*"))
