"""The per-page triage checks are small pure pieces: each holds back what it must, saying why."""

from __future__ import annotations

from datetime import UTC, date, datetime

from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.triage import PageDecisions, QuietHours, Render
from c2b.delivery.work import WorkBuilder

from devtools.deliverkit import make_plan, plan_dict

NIGHT_IN_SHANGHAI = datetime(2026, 5, 6, 15, 30, tzinfo=UTC).timestamp()  # 23:30 there, 16:30 in London


def _page(builder: WorkBuilder, attrs: dict[str, dict], now: float) -> PageDecisions:
    work = builder.page(list(attrs), attrs, 0)
    return PageDecisions(work, now, resend=[], fresh=list(work.items))


def test_quiet_hours_defer_or_expire_and_let_the_open_ones_go() -> None:
    plan = make_plan(plan_dict("p_tri"))
    window = SendWindow("Asia/Shanghai", "09:00-21:00", None, date(2026, 5, 6))
    builder = WorkBuilder(plan, "r1", window, lambda: NIGHT_IN_SHANGHAI)
    page = _page(builder, {"a": {"timezone": "Europe/London"}, "b": {}}, NIGHT_IN_SHANGHAI)
    QuietHours(window)(page)
    assert [it.uid for it in page.fresh] == ["a"]
    assert [(c.field, c.state, c.outcome) for c in page.changes] == [("t0|b", "x", "expired")]


def test_render_fails_one_user_with_the_reason_and_keeps_the_rest() -> None:
    data = plan_dict("p_tri")
    data["touches"][0]["template"] = "Hi {{ nickname }}"
    builder = WorkBuilder(make_plan(data), "r1", SendWindow(), lambda: 0.0)
    page = _page(builder, {"a": {"nickname": "Ann"}, "b": {}}, 0.0)
    Render(builder)(page)
    assert [(it.uid, it.message and it.message.text) for it in page.fresh] == [("a", "Hi Ann")]
    assert page.changes[0].field == "t0|b" and page.changes[0].state.startswith("f:template:")


def test_one_more_check_is_one_small_callable() -> None:
    """How a suppression-at-send-time or budget check plugs in: narrow the page, hold with a reason."""
    builder = WorkBuilder(make_plan(plan_dict("p_tri")), "r1", SendWindow(), lambda: 0.0)
    page = _page(builder, {"a": {}, "b": {}}, 0.0)

    def suppressed(p: PageDecisions) -> None:
        for it in [it for it in p.fresh if it.uid == "b"]:
            p.hold(it, "f:suppressed", "suppressed")
        p.fresh = [it for it in p.fresh if it.uid != "b"]

    for check in (suppressed, Render(builder)):
        check(page)
    assert [it.uid for it in page.fresh] == ["a"] and page.changes[0].outcome == "suppressed"
