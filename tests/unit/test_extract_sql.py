"""Placeholders are bound by drivers in their own style; segment headers document the library."""

from __future__ import annotations

import pytest
from c2b.audience.sql import SegmentError, bind, check_params, placeholders, read_segment, segment_info
from c2b.plan.errors import PlanError
from c2b.plan.load import parse_plan
from c2b.settings import sql_dir

SQL = """-- a comment with :not_a_param and 100%
SELECT ':nope', x::int, "col:x" FROM t WHERE a = :a AND b LIKE 'x%' AND c = :b OR d = :a /* :c */"""


def test_placeholders_skip_literals_comments_and_casts() -> None:
    assert placeholders(SQL) == ["a", "b"]


@pytest.mark.parametrize(("style", "sql_part", "args"), [
    ("dollar", "a = $a AND b LIKE 'x%' AND c = $b OR d = $a", {"a": 1, "b": "two"}),
    ("pyformat", "a = %(a)s AND b LIKE 'x%%' AND c = %(b)s OR d = %(a)s", {"a": 1, "b": "two"}),
    ("named", "a = :a AND b LIKE 'x%' AND c = :b OR d = :a", {"a": 1, "b": "two"}),
    ("qmark", "a = ? AND b LIKE 'x%' AND c = ? OR d = ?", [1, "two", 1]),
    ("format", "a = %s AND b LIKE 'x%%' AND c = %s OR d = %s", [1, "two", 1]),
    ("numeric", "a = :1 AND b LIKE 'x%' AND c = :2 OR d = :3", [1, "two", 1]),
])
def test_bind_every_paramstyle(style: str, sql_part: str, args) -> None:
    out, bound = bind(SQL, {"a": 1, "b": "two"}, style)
    assert sql_part in out
    assert bound == args
    assert "':nope'" in out and "x::int" in out


def test_check_params_names_missing_and_unknown() -> None:
    with pytest.raises(SegmentError, match=r"missing param\(s\) b.*unknown param\(s\) c.*it takes: a, b"):
        check_params("s.sql", SQL, {"a": 1, "c": 2})
    check_params("s.sql", SQL, {"a": 1, "b": 2})


def test_unknown_segment_lists_the_library() -> None:
    with pytest.raises(SegmentError, match="known segments: .*all_users.sql"):
        read_segment("nope.sql")
    with pytest.raises(SegmentError):
        read_segment("../../pyproject.toml")


LIBRARY = sorted(p.name for p in (sql_dir() / "segments").glob("*.sql"))


@pytest.mark.parametrize("name", LIBRARY)
def test_every_segment_documents_itself(name: str) -> None:
    info = segment_info(name)
    sql = read_segment(name)
    assert info.description, "a sentence saying what the segment returns"
    assert sorted(info.params) == sorted(placeholders(sql)), "header params == placeholders used"
    assert info.columns and info.columns[0] == "uid"
    assert "::" not in sql.replace("'::'", ""), "portable SQL: CAST(), not ::"


def test_required_segments_and_their_contract() -> None:
    want = {
        "all_users.sql": ({}, ["uid", "nickname", "city", "timezone", "acquisition_channel"]),
        "high_value_cancellations.sql": ({"min_price": "numeric", "days": "integer"},
                                         ["uid", "nickname", "city", "timezone", "phone", "last_item",
                                          "quoted_price", "cancel_reason", "cancelled_at"]),
        "new_users_by_channel.sql": ({"channel": "text", "days": "integer"},
                                     ["uid", "nickname", "city", "timezone", "acquisition_channel", "signup_at"]),
        "nps_detractors.sql": ({"max_score": "integer", "days": "integer"},
                               ["uid", "nickname", "city", "timezone", "phone", "score", "answered_at"]),
    }
    for name, (params, columns) in want.items():
        info = segment_info(name)
        assert {k: v.split(",")[0].split(":")[0].strip() for k, v in info.params.items()} == params, name
        assert info.columns == columns, name
    assert segment_info("cancelled_for_reason.sql").params.keys() == {"reason", "days"}


BASE = {"id": "p", "audience": {"segment": "all_users.sql"},
        "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}


def test_plan_exclusions_each_exactly_one_kind() -> None:
    plan = parse_plan({**BASE, "audience": {"segment": "all_users.sql", "exclude": [
        {"segment": "ordered_within_days.sql", "params": {"days": 7}},
        {"suppression_list": "vip"},
        {"contacted_within_days": 3}]}}, "p.yaml")
    assert [e.label for e in plan.audience.exclude] == [
        "segment:ordered_within_days.sql", "suppression_list:vip", "contacted_within_days:3"]
    assert parse_plan(BASE, "p.yaml").audience.exclude == []
    for bad, reason in [({"suppression_list": "vip", "contacted_within_days": 3}, "exactly one"),
                        ({}, "exactly one"),
                        ({"suppression_list": "vip", "params": {"x": 1}}, "only goes with 'segment'"),
                        ({"contacted_within_days": 0}, "must be >= 1"),
                        ({"suppression_list": "a b"}, "must be a list name")]:
        with pytest.raises(PlanError, match=reason):
            parse_plan({**BASE, "audience": {"segment": "all_users.sql", "exclude": [bad]}}, "p.yaml")
