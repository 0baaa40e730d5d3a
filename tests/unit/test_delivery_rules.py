"""Pure rules of delivery: quiet hours, the kill switch Variable, idempotency keys, HTTP outcomes."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from c2b.channels.http import classify
from c2b.delivery.controls.kill_switch import variable_stops
from c2b.delivery.controls.quiet_hours import SendWindow, parse_send_hours
from c2b.delivery.work import idempotency_key


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_send_hours_parse_and_reject_nonsense() -> None:
    assert [t.isoformat() for t in parse_send_hours("09:00-21:30")] == ["09:00:00", "21:30:00"]
    for bad in ("9-21", "09:00", "21:00-21:00", "25:00-26:00"):
        with pytest.raises(ValueError):
            parse_send_hours(bad)


def test_next_open_in_the_users_timezone() -> None:
    w = SendWindow("Asia/Shanghai", "09:00-21:00")
    noon_sh = _utc(2026, 5, 6, 4, 0)  # 12:00 in Shanghai
    assert w.next_open(noon_sh) == noon_sh
    night_sh = _utc(2026, 5, 6, 15, 30)  # 23:30 in Shanghai, 16:30 in London
    assert w.next_open(night_sh) == _utc(2026, 5, 7, 1, 0)
    assert w.next_open(night_sh, "Europe/London") == night_sh
    early = _utc(2026, 5, 6, 0, 0)  # 08:00 in Shanghai: opens the same day
    assert w.next_open(early) == _utc(2026, 5, 6, 1, 0)
    assert w.next_open(night_sh, "No/Such_Zone") == _utc(2026, 5, 7, 1, 0)  # falls back to the plan's


def test_send_hours_past_midnight_and_date_bounds() -> None:
    w = SendWindow("UTC", "20:00-02:00")
    assert w.next_open(_utc(2026, 5, 6, 1, 0)) == _utc(2026, 5, 6, 1, 0)
    assert w.next_open(_utc(2026, 5, 6, 3, 0)) == _utc(2026, 5, 6, 20, 0)
    bounded = SendWindow("UTC", "09:00-21:00", start=date(2026, 5, 10), end=date(2026, 5, 11))
    assert bounded.next_open(_utc(2026, 5, 6, 12, 0)) == _utc(2026, 5, 10, 9, 0)
    assert bounded.next_open(_utc(2026, 5, 11, 22, 0)) is None  # after the last day: never
    assert SendWindow().always_open and SendWindow().next_open(_utc(2026, 1, 1, 3)) == _utc(2026, 1, 1, 3)


def test_local_day_is_the_users() -> None:
    w = SendWindow("Asia/Shanghai")
    t = _utc(2026, 5, 6, 20, 0)
    assert w.local_day(t) == "20260507" and w.local_day(t, "America/New_York") == "20260506"


@pytest.mark.parametrize(("value", "stops"), [
    (None, False), ("", False), ("off", False), ("[]", False), ("all", True), ("ALL", True), ("*", True),
    ("p1", True), ("p2", False), ("p0, p1", True), ('["p1"]', True), ('["p2"]', False), (["p1"], True),
    ("true", True), (True, True), (False, False),
])
def test_kill_variable_values(value, stops: bool) -> None:
    assert variable_stops(value, "p1") is stops


def test_idempotency_key_is_stable_and_distinct() -> None:
    k = idempotency_key("plan", "run", "touch", "u1")
    assert k == idempotency_key("plan", "run", "touch", "u1") and len(k) == 32
    assert len({k, idempotency_key("plan", "run2", "touch", "u1"), idempotency_key("plan", "run", "t2", "u1"),
                idempotency_key("plan", "run", "touch", "u2")}) == 4
    assert idempotency_key("p", "r", "t", "a\ud800z")  # lone surrogates do not crash


@pytest.mark.parametrize(("status", "outcome"), [
    (200, "sent"), (202, "sent"), (400, "failed"), (404, "failed"), (408, "retry"), (429, "retry"),
    (500, "retry"), (503, "retry"),
])
def test_http_status_classes(status: int, outcome: str) -> None:
    assert classify(status).status == outcome


def test_deliver_tasks_map_over_shards_or_groups_of_them() -> None:
    from c2b.steps import all_shards, task_units, unit_label

    assert task_units([1, 2, 3], 1) == [1, 2, 3]
    assert task_units([1, 2, 3, 5, 6], 2) == [[1, 2], [3, 5], [6]]
    assert all_shards(task_units([1, 2, 3, 5, 6], 2)) == [1, 2, 3, 5, 6] == all_shards([1, 2, 3, 5, 6])
    assert [unit_label(u) for u in ([7], 7, [1, 2, 3], [3, 5])] == ["shard 7", "shard 7", "shards 1-3", "shards 3, 5"]
