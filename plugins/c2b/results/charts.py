"""Charts of the Results view as inline SVG strings: pure functions of the results page's data.

Rendered on the server so the page needs no JavaScript and no CDN (the machine may be offline).
Every mark carries ``data-*`` attributes with the number it draws, so tests (and a curious reader
of the page source) can check a bar or an interval against the figures it stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
CONTROL_COLOUR = "#7f7f7f"
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def variant_colours(variants: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Return a colour per variant name: grey for the control group, palette colours for the others."""
    colours: dict[str, str] = {}
    i = 0
    for v in variants:
        if v.get("is_control"):
            colours[v["name"]] = CONTROL_COLOUR
        else:
            colours[v["name"]] = PALETTE[i % len(PALETTE)]
            i += 1
    return colours


def linear_scale(lo: float, hi: float, px_lo: float, px_hi: float) -> Callable[[float], float]:
    """Return a map from the domain ``[lo, hi]`` onto pixels ``[px_lo, px_hi]`` (a flat domain maps to the middle)."""
    if hi <= lo:
        mid = (px_lo + px_hi) / 2
        return lambda _x: mid
    k = (px_hi - px_lo) / (hi - lo)
    return lambda x: px_lo + (x - lo) * k


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Return about ``count`` round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 x 10^n)."""
    import math

    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12) + 0.0)  # + 0.0 turns -0.0 into 0.0
        t += step
    return ticks


def _svg(width: float, height: float, body: Sequence[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}" '
            f'viewBox="0 0 {width:g} {height:g}" role="img" aria-label="{escape(title)}" {FONT}>'
            f"<title>{escape(title)}</title>{''.join(body)}</svg>")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_uplift(value: float, kind: str) -> str:
    """Return an absolute uplift as text: percentage points for a rate, plain units for a value."""
    return f"{100 * value:+.2f} pp" if kind == "rate" else f"{value:+,.2f}"


def format_tick(value: float, step: float, kind: str) -> str:
    """Return an axis label with no more decimals than the tick step needs (``+4 pp``, ``+2.5 pp``)."""
    import math

    scale = 100 if kind == "rate" else 1
    decimals = max(0, -math.floor(math.log10(abs(step * scale)) + 1e-9)) if step else 0
    unit = " pp" if kind == "rate" else ""
    return f"{scale * value:+.{decimals}f}{unit}".replace("+0 ", "0 ").replace("-0 ", "0 ")


def funnel_svg(variants: Sequence[Mapping[str, Any]], width: int = 640) -> str:
    """Return per variant three bars, assigned -> reached -> converted, on one scale (the largest arm)."""
    colours = variant_colours(variants)
    label_w, right_w, bar_h, gap, group_gap = 110, 150, 14, 3, 14
    group_h = 3 * bar_h + 2 * gap
    height = max(len(variants), 1) * (group_h + group_gap) + 6
    top = max((int(v["assigned"]) for v in variants), default=0)
    x = linear_scale(0, top, label_w, width - right_w)
    body: list[str] = []
    for i, v in enumerate(variants):
        y0 = 4 + i * (group_h + group_gap)
        body.append(f'<text x="0" y="{y0 + group_h / 2 + 4:g}">{escape(variant_label(v))}</text>')
        for j, (stage, n) in enumerate((("assigned", v["assigned"]), ("reached", v["reached"]),
                                        ("converted", v["converted"]))):
            y = y0 + j * (bar_h + gap)
            w = max(x(n) - label_w, 0.0)
            share = f" ({_pct(n / v['assigned'])})" if stage != "assigned" and v["assigned"] else ""
            body.append(f'<rect class="funnel-bar" data-variant="{escape(v["name"])}" data-stage="{stage}" '
                        f'data-value="{int(n)}" x="{label_w}" y="{y:g}" width="{w:.2f}" height="{bar_h}" '
                        f'fill="{colours[v["name"]]}" fill-opacity="{1.0 - 0.28 * j:.2f}"/>')
            body.append(f'<text x="{label_w + w + 4:.2f}" y="{y + bar_h - 3:g}" fill="#333">'
                        f"{stage} {int(n):,}{share}</text>")
    return _svg(width, height, body, "Funnel per variant: assigned, reached, converted")


def uplift_svg(uplifts: Sequence[Mapping[str, Any]], kind: str, width: int = 640) -> str:
    """Return each variant's absolute uplift over control as a point with its interval, and a zero line.

    An interval that does not cross the zero line is an uplift (or a loss) the data supports at the
    page's confidence; the marks of significant variants are solid, the others hollow.
    """
    label_w, pad, row_h, axis_h = 150, 36, 30, 26
    height = max(len(uplifts), 1) * row_h + axis_h + 8
    if not uplifts:
        return _svg(width, height, ['<text x="0" y="20">no uplift to show</text>'], "Uplift against control")
    bounds = [0.0]
    for u in uplifts:
        bounds += [float(b) for b in (u["abs"], *_interval(u)) if b is not None]
    lo, hi = min(bounds), max(bounds)
    span = (hi - lo) or max(abs(hi), 1e-3)
    lo, hi = lo - 0.08 * span, hi + 0.08 * span
    x = linear_scale(lo, hi, label_w + pad, width - pad)
    plot_bottom = len(uplifts) * row_h + 4
    body = [f'<line class="zero" x1="{x(0):.2f}" x2="{x(0):.2f}" y1="0" y2="{plot_bottom}" stroke="#999" '
            f'stroke-dasharray="4 3"/>']
    ticks = nice_ticks(lo, hi, 4)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for t in ticks:
        body.append(f'<line x1="{x(t):.2f}" x2="{x(t):.2f}" y1="{plot_bottom}" y2="{plot_bottom + 4}" stroke="#666"/>'
                    f'<text x="{x(t):.2f}" y="{plot_bottom + 16}" text-anchor="middle" fill="#555">'
                    f"{escape(format_tick(t, step, kind))}</text>")
    for i, u in enumerate(uplifts):
        cy = 4 + i * row_h + row_h / 2
        colour = "#1a7f37" if u["significant"] and (u["abs"] or 0) > 0 else "#cf222e" if u["significant"] else "#555"
        fill = colour if u["significant"] else "white"
        name = escape(u["variant"])
        body.append(f'<text x="0" y="{cy + 4:g}">{name} vs {escape(u["control"])}</text>')
        c_lo, c_hi = _interval(u)
        if u["abs"] is None:
            body.append(f'<text x="{label_w + pad}" y="{cy + 4:g}" fill="#555">not computable (an empty arm)</text>')
            continue
        a = float(u["abs"])
        if c_lo is None or c_hi is None:  # e.g. no conversions yet in either arm: no interval to draw
            body.append(f'<text x="{x(a) + 10:.2f}" y="{cy + 4:g}" fill="#555">no interval yet</text>')
        else:
            body.append(f'<line class="ci" data-variant="{name}" data-lo="{c_lo!r}" data-hi="{c_hi!r}" '
                        f'x1="{x(c_lo):.2f}" x2="{x(c_hi):.2f}" y1="{cy:g}" y2="{cy:g}" stroke="{colour}" '
                        f'stroke-width="2"/>')
            for end in (c_lo, c_hi):
                body.append(f'<line x1="{x(end):.2f}" x2="{x(end):.2f}" y1="{cy - 5:g}" y2="{cy + 5:g}" '
                            f'stroke="{colour}" stroke-width="2"/>')
        body.append(f'<circle class="estimate" data-variant="{name}" data-value="{a!r}" cx="{x(a):.2f}" '
                    f'cy="{cy:g}" r="5" fill="{fill}" stroke="{colour}" stroke-width="2"/>')
    return _svg(width, height, body, "Absolute uplift against control with its interval")


def _interval(u: Mapping[str, Any]) -> tuple[float | None, float | None]:
    ci = u.get("abs_ci") or (None, None)
    return (None if ci[0] is None else float(ci[0]), None if ci[1] is None else float(ci[1]))


def daily_svg(daily: Sequence[Mapping[str, Any]], variants: Sequence[Mapping[str, Any]],
              width: int = 640, height: int = 200) -> str:
    """Return conversions per day since the send, one line per variant."""
    colours = variant_colours(variants)
    names = [v["name"] for v in variants] or sorted({str(d["variant"]) for d in daily})
    for d in daily:
        colours.setdefault(str(d["variant"]), PALETTE[len(colours) % len(PALETTE)])
        if d["variant"] not in names:
            names.append(str(d["variant"]))
    days = sorted({d["day"] for d in daily}, key=str)
    if not days:
        return _svg(width, 40, ['<text x="0" y="20">no conversions yet</text>'], "Conversions per day")
    left, right, top, bottom, legend_h = 44, 12, 8, 40, 18
    y_max = max(int(d["conversions"]) for d in daily) or 1
    ticks = nice_ticks(0, y_max, 4)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else y_max
    while ticks[-1] < y_max:  # the top gridline is at or above the highest point
        ticks.append(ticks[-1] + step)
    y_top = ticks[-1]
    x = linear_scale(0, len(days) - 1, left + 10, width - right - 10)
    y = linear_scale(0, y_top, height - bottom, top)
    body: list[str] = [f'<line x1="{left}" x2="{width - right}" y1="{y(0):.2f}" y2="{y(0):.2f}" stroke="#666"/>']
    for t in ticks:
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.2f}" y2="{y(t):.2f}" stroke="#eee"/>'
                    f'<text x="{left - 6}" y="{y(t) + 4:.2f}" text-anchor="end" fill="#555">{t:g}</text>')
    step = max(1, len(days) // 10)
    for i, day in enumerate(days):
        if i % step == 0 or i == len(days) - 1:
            body.append(f'<text x="{x(i):.2f}" y="{height - bottom + 16}" text-anchor="middle" fill="#555">'
                        f"{escape(_day_label(day))}</text>")
    by_variant: dict[str, dict[Any, int]] = {n: {} for n in names}
    for d in daily:
        by_variant[str(d["variant"])][d["day"]] = int(d["conversions"])
    for n in names:
        points = [(x(i), y(by_variant[n].get(day, 0)), day, by_variant[n].get(day, 0)) for i, day in enumerate(days)]
        path = " ".join(f"{px:.2f},{py:.2f}" for px, py, _, _ in points)
        body.append(f'<polyline data-variant="{escape(n)}" points="{path}" fill="none" stroke="{colours[n]}" '
                    f'stroke-width="2"/>')
        for px, py, day, value in points:
            body.append(f'<circle class="day-point" data-variant="{escape(n)}" data-day="{escape(str(day))}" '
                        f'data-value="{value}" cx="{px:.2f}" cy="{py:.2f}" r="2.5" fill="{colours[n]}"/>')
    lx = left
    for n in names:
        body.append(f'<rect x="{lx}" y="{height - legend_h + 4}" width="10" height="10" fill="{colours[n]}"/>'
                    f'<text x="{lx + 14}" y="{height - legend_h + 13}">{escape(n)}</text>')
        lx += 24 + 7 * len(n)
    return _svg(width, height, body, "Conversions per day since the send")


def variant_label(v: Mapping[str, Any]) -> str:
    """Return a variant's name, marked as the control group unless its name already says so."""
    name = str(v["name"])
    return f"{name} (control)" if v.get("is_control") and "control" not in name.lower() else name


def _day_label(day: Any) -> str:
    """Return a short axis label: ``MM-DD`` of an ISO date, ``day N`` of an offset, else the text."""
    if isinstance(day, int):
        return f"day {day}"
    text = str(day)
    return text[5:10] if len(text) >= 10 and text[4] == "-" else text
