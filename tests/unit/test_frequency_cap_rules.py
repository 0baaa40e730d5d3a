"""The pure parts of frequency caps: ISO weeks of local days, key lifetimes, the rules a plan obeys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from c2b.delivery.controls.frequency_cap import (
    BUCKETS,
    NO_LINE,
    CapRules,
    ChannelCap,
    _expire_at,
    fcap_path,
    fcap_place,
    fcap_receipts,
    rules_of,
    week_of,
)
from c2b.hashing import shard_index
from c2b.plan.lines import cap_rules, line_of

from devtools.deliverkit import make_plan, plan_dict


@pytest.mark.parametrize("day, week", [
    ("20261123", "2026W48"), ("20261129", "2026W48"), ("20261130", "2026W49"),  # Monday to Sunday
    ("20261231", "2026W53"), ("20270103", "2026W53"), ("20270104", "2027W01"),  # the ISO year, not the calendar's
    ("20251229", "2026W01"),
])
def test_week_of_a_local_day_is_its_iso_week(day: str, week: str) -> None:
    assert week_of(day) == week


def test_keys_expire_just_past_their_window_in_the_last_timezone() -> None:
    day_at, week_at = _expire_at("20261125")  # a Wednesday
    # The day ends at 12:00 UTC the next day in UTC-12; the week on Monday 12:00 UTC: 3 hours to spare.
    assert datetime.fromtimestamp(day_at, UTC) == datetime(2026, 11, 26, 15, tzinfo=UTC)
    assert datetime.fromtimestamp(week_at, UTC) == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert _expire_at("20261129")[1] == week_at  # Sunday: the same week key, the same end


def test_keys_of_one_user_share_one_slot_and_scope_apart() -> None:
    rcpt = fcap_receipts("growth", "20261125", "u1")
    prefix = rcpt.split("}")[0] + "}"
    bucket, sub = fcap_place("u1")
    assert prefix == "c2b:fcap:{growth:" + f"{bucket}" + "}" and bucket == shard_index("u1", BUCKETS)
    assert rcpt == f"{prefix}:20261125:rcpt"
    # Level 0 (the bucket), 2 (its quarter: the sub-key's low 2 bits), 5 (the sub-key).
    assert fcap_path("growth", "20261125", "u1") == (f"{prefix}:20261125", f"{prefix}:20261125:q{sub % 4}",
                                                     f"{prefix}:20261125:{sub}")
    assert fcap_path("growth", "2026W48", "u1")[2] == f"{prefix}:2026W48:{sub}"
    assert prefix.startswith("c2b:fcap:{growth:") and prefix.endswith("}")
    assert fcap_path("care", "20261125", "u1")[0] != fcap_path("growth", "20261125", "u1")[0]
    assert fcap_path(NO_LINE, "20261125", "u1")[0].startswith("c2b:fcap:{-:")


def test_describe() -> None:
    rules = CapRules("growth", 3, 10, (("push", ChannelCap(2, None)), ("sms", ChannelCap(1, 2))))
    assert rules.describe() == "3/day, 10/week; push 2/day; sms 1/day, 2/week"
    assert CapRules("care", per_channel=(("outbound_call", ChannelCap(None, 1)),)).describe() == "outbound_call 1/week"
    assert CapRules().describe() == "none" and not CapRules().capped


ROOT = Path(__file__).resolve().parents[2]


def test_a_plans_rules_are_its_lines_with_its_own_stricter_day() -> None:
    growth = line_of(ROOT / "dags" / "plans" / "growth" / "x.yaml")
    plain = make_plan(plan_dict("p"))
    strict = make_plan(plan_dict("p", frequency_cap=2))
    assert cap_rules(growth, plain) == growth.caps and growth.caps.scope == "growth"
    assert cap_rules(growth, strict) == CapRules("growth", 2, growth.caps.per_week, growth.caps.per_channel)
    assert cap_rules(None, strict) == CapRules(NO_LINE, 2) == rules_of(strict)  # outside any line: as before
    assert rules_of(plain) == CapRules() and not rules_of(plain).capped
