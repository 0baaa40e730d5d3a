"""The delivery log read in bulk (``shard_log_table``) gives the rows the row-by-row reader gives.

Both read a delivered shard from a real Redis: the bulk reader matches the shard's packed uids with
its page records by sorting, the row-by-row one (``shard_log_rows``) looks every (touch, uid) up.
The bulk one only reads the usual shape (packed uids, every state in this load's page records) and
says ``None`` for anything else, which the row reader then reads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from c2b.channels import ChannelConfig, make_channel
from c2b.delivery.shard import ShardDelivery
from c2b.results.delivery_log import shard_log_rows, shard_log_table
from c2b.results.store import _as_rows

from devtools.deliverkit import load_audience, make_plan, plan_dict
from devtools.gateway import Faults, Gateway

AT = datetime(2026, 5, 6, 12, 0, tzinfo=UTC)


def _channels(plan: Any, url: str) -> dict[str, Any]:
    return {t.name: make_channel(t.channel, ChannelConfig(url=url)) for t in plan.touches}


def _deliver(redis: Any, plan: Any, gw: Gateway, kill_after: int | None = None, clock: Any = None) -> None:
    calls = [0]

    def kill() -> bool:
        calls[0] += 1
        return kill_after is not None and calls[0] > kill_after

    extra = {"clock": clock} if clock else {}
    ShardDelivery(redis, plan, "r1", 1, _channels(plan, gw.url), kill, **extra).run(plan.delivery.page_size, 4)


def _both(redis: Any, plan: Any) -> tuple[list[tuple[Any, ...]], Any]:
    rows = sorted(shard_log_rows(redis, plan, "r1", 1, AT), key=repr)
    bulk = shard_log_table(redis, plan, "r1", 1, AT)
    return rows, bulk


def _same(redis: Any, plan: Any) -> list[tuple[Any, ...]]:
    rows, bulk = _both(redis, plan)
    assert bulk is not None, "the usual shape is read in bulk"
    table, sent = bulk
    assert sorted(_as_rows(table), key=repr) == rows
    assert sorted(sent) == sorted({r[4] for r in rows if r[5] == "sent"})
    return rows


def test_two_touches_a_control_arm_and_refused_messages(redis_client, tmp_path: Path) -> None:
    plan = make_plan(plan_dict("p_bulk", touches=2, page_size=50, control=20))
    users = [str(10**9 + i * 7919) for i in range(400)] + ["-5", "0"]
    load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway(Faults(reject_rate=0.1)) as gw:
        _deliver(redis_client, plan, gw)
    rows = _same(redis_client, plan)
    outcomes = {r[5] for r in rows}
    assert {"sent", "failed", "holdout"} <= outcomes, outcomes
    assert any(r[6] and "400" in r[6] for r in rows)  # a failure keeps its reason
    assert len({r[4] for r in rows}) == len(users)


def test_a_stopped_shard_logs_its_unsent_users(redis_client, tmp_path: Path) -> None:
    plan = make_plan(plan_dict("p_bulk_stop", page_size=20))
    users = [str(5000 + i) for i in range(300)]
    load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway(Faults(median_latency_s=0.002)) as gw:
        _deliver(redis_client, plan, gw, kill_after=4)
    rows = _same(redis_client, plan)
    assert {"sent", "unsent"} <= {r[5] for r in rows}


def test_capped_messages_keep_which_cap(redis_client, tmp_path: Path) -> None:
    plan = make_plan(plan_dict("p_bulk_cap", touches=2, page_size=50, frequency_cap=1))
    users = [str(7000 + i) for i in range(120)]
    load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway() as gw:
        _deliver(redis_client, plan, gw)
    rows = _same(redis_client, plan)
    assert {(r[3], r[5], r[6]) for r in rows} == {("t0", "sent", None), ("t1", "capped", "per_day")}


def test_other_shapes_are_left_to_the_row_reader(redis_client, tmp_path: Path) -> None:
    # Text uids: the shard is a ZSET, not packed.
    plan = make_plan(plan_dict("p_bulk_text", page_size=50))
    load_audience(redis_client, plan, "r1", [f"u{i}" for i in range(60)], tmp_path / "a")
    with Gateway() as gw:
        _deliver(redis_client, plan, gw)
    assert shard_log_table(redis_client, plan, "r1", 1, AT) is None
    # Deferred users (quiet hours): their entries live in the ledger hash.
    data = plan_dict("p_bulk_quiet", page_size=50)
    data["window"] = {"send_hours": "09:00-21:00", "timezone": "Asia/Shanghai"}
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", [str(900 + i) for i in range(60)], tmp_path / "b")
    night = datetime(2026, 5, 6, 15, 30, tzinfo=UTC).timestamp()
    with Gateway() as gw:
        _deliver(redis_client, plan, gw, clock=lambda: night)
    rows, bulk = _both(redis_client, plan)
    assert bulk is None and {r[5] for r in rows} == {"deferred"}
