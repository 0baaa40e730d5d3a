"""The Results view's SVG charts: well-formed, and every mark where its number says it should be."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import pytest
from c2b.results import charts
from c2b.results.page import example_page

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on malformed markup or unescaped names
    assert root.tag == f"{NS}svg"
    return root


def marks(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if e.get("class") == cls]


def test_linear_scale_maps_the_domain_onto_the_pixels() -> None:
    x = charts.linear_scale(-0.1, 0.3, 100, 500)
    assert (x(-0.1), x(0.3), x(0.1)) == pytest.approx((100, 500, 300))
    assert charts.linear_scale(5, 5, 0, 10)(123) == 5  # a flat domain sits in the middle


@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (-0.034, 0.092), (0, 573), (0, 7), (-12.5, -3.2)])
def test_nice_ticks_are_round_and_inside_the_range(lo: float, hi: float) -> None:
    ticks = charts.nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 11
    assert all(lo - 1e-12 <= t <= hi + 1e-12 for t in ticks)
    steps = {round(b - a, 12) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1
    step = steps.pop()
    assert f"{step:e}".split("e")[0].rstrip("0").rstrip(".") in {"1", "2", "5"}


@pytest.mark.parametrize(("value", "step", "kind", "text"), [
    (0.04, 0.02, "rate", "+4 pp"), (-0.025, 0.005, "rate", "-2.5 pp"), (0.0, 0.02, "rate", "0 pp"),
    (150.0, 50.0, "value", "+150"), (0.25, 0.05, "value", "+0.25")])
def test_axis_labels_have_the_decimals_the_step_needs(value: float, step: float, kind: str, text: str) -> None:
    assert charts.format_tick(value, step, kind) == text


def test_funnel_bars_are_proportional_to_the_counts_on_one_scale() -> None:
    page = example_page()
    root = parse(charts.funnel_svg(page["variants"], width=640))
    bars = {(b.get("data-variant"), b.get("data-stage")): b for b in marks(root, "rect", "funnel-bar")}
    assert len(bars) == 3 * len(page["variants"])
    biggest = max(v["assigned"] for v in page["variants"])
    full = float(bars[("coupon", "assigned")].get("width"))  # the coupon arm is the largest
    assert full == pytest.approx(640 - 110 - 150)
    for v in page["variants"]:
        for stage in ("assigned", "reached", "converted"):
            bar = bars[(v["name"], stage)]
            assert int(bar.get("data-value")) == v[stage]
            assert float(bar.get("width")) == pytest.approx(full * v[stage] / biggest, abs=0.01)
    assert bars[("control", "assigned")].get("fill") == charts.CONTROL_COLOUR


def test_uplift_intervals_sit_on_the_zero_line_only_when_they_cross_it() -> None:
    page = example_page()
    root = parse(charts.uplift_svg(page["uplifts"], "rate"))
    zero = float(marks(root, "line", "zero")[0].get("x1"))
    ci = {e.get("data-variant"): e for e in marks(root, "line", "ci")}
    dots = {e.get("data-variant"): e for e in marks(root, "circle", "estimate")}
    for u in page["uplifts"]:
        x1, x2 = float(ci[u["variant"]].get("x1")), float(ci[u["variant"]].get("x2"))
        crosses = u["abs_ci"][0] < 0 < u["abs_ci"][1]
        assert (x1 < zero < x2) == crosses
        assert x1 < float(dots[u["variant"]].get("cx")) < x2
        assert float(ci[u["variant"]].get("data-lo")) == u["abs_ci"][0]
        # significant: solid mark; not: hollow
        assert (dots[u["variant"]].get("fill") != "white") == u["significant"]
    # the same scale for every row: a larger uplift is further right
    assert float(dots["coupon"].get("cx")) > float(dots["red_packet"].get("cx")) > zero


def test_uplift_chart_with_a_loss_and_a_value_metric() -> None:
    loss = {"variant": "v", "control": "c", "abs": -12.5, "abs_ci": [-20.0, -5.0], "significant": True}
    root = parse(charts.uplift_svg([loss], "value"))
    zero = float(marks(root, "line", "zero")[0].get("x1"))
    line = marks(root, "line", "ci")[0]
    assert float(line.get("x1")) < float(line.get("x2")) < zero
    assert marks(root, "circle", "estimate")[0].get("stroke") == "#cf222e"  # a significant loss is red
    assert "pp" not in ET.tostring(root, encoding="unicode")  # a value metric is not in percentage points


def test_uplifts_without_an_interval_or_an_estimate_are_said_not_drawn() -> None:
    """No conversions yet (or an empty arm): the statistics give ``None``; the chart says so."""
    no_ci = {"variant": "a", "control": "c", "abs": 0.0, "abs_ci": [None, None], "significant": False}
    empty = {"variant": "b", "control": "c", "abs": None, "abs_ci": [None, None], "significant": False}
    svg = charts.uplift_svg([no_ci, empty], "rate")
    root = parse(svg)
    assert marks(root, "line", "ci") == []
    assert [e.get("data-variant") for e in marks(root, "circle", "estimate")] == ["a"]
    assert "no interval yet" in svg and "not computable" in svg


def test_names_are_escaped() -> None:
    page = example_page()
    evil = '<script>alert("x")</script>&'
    variants = copy.deepcopy(page["variants"])
    variants[0]["name"] = evil
    root = parse(charts.funnel_svg(variants))
    assert evil in {b.get("data-variant") for b in marks(root, "rect", "funnel-bar")}
    assert "<script>" not in charts.funnel_svg(variants)
    uplift = {**page["uplifts"][0], "variant": evil}
    assert "<script>" not in charts.uplift_svg([uplift], "rate")
    parse(charts.daily_svg([{"day": "2026-11-27", "variant": evil, "conversions": 3}], variants))


def test_daily_lines_one_point_per_day_missing_days_are_zero() -> None:
    page = example_page()
    daily = [d for d in page["daily"] if not (d["variant"] == "control" and d["day"] == "2026-11-29")]
    daily[0] = {**daily[0], "conversions": 150}  # coupon, first day: the highest point of the chart
    root = parse(charts.daily_svg(daily, page["variants"]))
    days = sorted({d["day"] for d in page["daily"]})
    points = marks(root, "circle", "day-point")
    assert len(points) == len(days) * len(page["variants"])
    by = {(p.get("data-variant"), p.get("data-day")): p for p in points}
    assert by[("control", "2026-11-29")].get("data-value") == "0"
    top = by[(daily[0]["variant"], daily[0]["day"])]
    assert float(top.get("cy")) == min(float(p.get("cy")) for p in points)
    # higher counts are drawn higher (smaller y)
    assert float(by[("coupon", days[1])].get("cy")) < float(by[("red_packet", days[1])].get("cy")) \
        < float(by[("control", days[1])].get("cy"))
    assert len(root.findall(f"{NS}polyline")) == len(page["variants"])


def test_empty_inputs_render_a_message_not_an_error() -> None:
    assert "no conversions yet" in charts.daily_svg([], [])
    assert "no uplift" in charts.uplift_svg([], "rate")
    parse(charts.funnel_svg([]))
