"""The results page of one plan run, as one JSON-able dict: what the UI view and the CLI show.

This is the contract between the results engine (delivery log, attribution, statistics) and
whatever renders it (the Airflow UI plugin, ``c2b results``). It reads only the results store
(the ``c2b_results`` connection, resolved by :func:`c2b.airflow.resources.get_results_store`), so
the api-server can call it without a warehouse or Redis.

Shape (every key always present)::

    plan_id          str
    run_id           str                       the plan DAG's run id
    metric           {name: str, kind: "rate" | "value"}   the goal's primary metric
    method           "fixed" | "sequential"    which intervals/p-values the page shows
    method_detail    str                       the design and this look, e.g. "group-sequential,
                                               O'Brien-Fleming-type alpha spending over 7 daily looks;
                                               look 7 of 7, boundary |z| >= 2.0xx" (c2b.results.group_sequential)
    window_days      int                       attribution window after each user's touch
    days_since_send  float                     at the time attribution last ran (capped at window_days
                                               when the window has closed)
    srm              {p_value: float | None, ok: bool | None,
                      expected: {variant: share 0..1}, observed: {variant: users}}
                     ok is None when there is nothing to test (one variant)
    variants         [{name, is_control, assigned, reached, converted, rate, rate_ci: [lo, hi]}]
                     assigned: users of the variant in the run (holdout users included);
                     reached: users with at least one touch sent (control: its held-out users);
                     converted: users with a goal event within the window after their touch;
                     rate = converted / assigned (value metric: mean value per assigned user)
    uplifts          [{variant, control, abs, abs_ci: [lo, hi], rel, rel_ci: [lo, hi], p_value,
                       p_adjusted, significant}]   empty without a control group
    touches          [{touch, variant, outcome, reason, count}]   outcome: sent, failed, capped,
                     expired, deferred, pending, holdout; reason: the failure reason or null
    daily            [{day: "YYYY-MM-DD", variant, conversions}]   day 0 = the send day
    note             str | None    e.g. why there is no uplift (no control group, no goal yet)
    audit            {plan_sha256, plan_file, git_commit, git_dirty, segments: {file: sha256},
                      trigger, triggered_by, params, code: {c2b, engine_sha256, airflow}, line,
                      recorded_at, reported_at, status} | None
                     the run's audit record as its report task stored it (c2b.results.audit);
                     None until the report task has run

Numbers that cannot be computed (an empty arm) are ``None``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

METHODS = ("fixed", "sequential")


def results_page(plan_id: str, run_id: str | None = None, store: Any = None) -> dict[str, Any]:
    """Return the results page of ``plan_id``'s run ``run_id`` (its latest logged run when None).

    Raises ``LookupError`` (with a message saying what to run) when the plan has no logged run, or
    the run is not in the store. ``store`` defaults to the ``c2b_results`` connection's store.
    """
    if store is None:
        from c2b.airflow.resources import get_results_store

        store = get_results_store()
    from c2b.results.attribution import build_page

    return build_page(store, plan_id, run_id)


def example_page() -> dict[str, Any]:
    """Return a filled-in page (fixed numbers) for renderers to develop and test against."""
    return {
        "plan_id": "cancelled_price_ab",
        "run_id": "manual__2026-11-27T10:00:00+00:00",
        "metric": {"name": "sold", "kind": "rate"},
        "method": "sequential",
        "method_detail": "group-sequential, O'Brien-Fleming-type alpha spending over 7 daily looks; "
                         "look 7 of 7, boundary |z| >= 2.093",
        "window_days": 7,
        "days_since_send": 7.0,
        "srm": {"p_value": 0.41, "ok": True,
                "expected": {"coupon": 0.4, "red_packet": 0.4, "control": 0.2},
                "observed": {"coupon": 2604, "red_packet": 2581, "control": 1296}},
        "variants": [
            {"name": "coupon", "is_control": False, "assigned": 2604, "reached": 2604, "converted": 573,
             "rate": 0.22, "rate_ci": [0.2045, 0.2364]},
            {"name": "red_packet", "is_control": False, "assigned": 2581, "reached": 2581, "converted": 491,
             "rate": 0.1902, "rate_ci": [0.1755, 0.2059]},
            {"name": "control", "is_control": True, "assigned": 1296, "reached": 1296, "converted": 208,
             "rate": 0.1605, "rate_ci": [0.1414, 0.1816]},
        ],
        "uplifts": [
            {"variant": "coupon", "control": "control", "abs": 0.0595, "abs_ci": [0.0269, 0.0921],
             "rel": 0.3707, "rel_ci": [0.1502, 0.6338], "p_value": 1.3e-05, "p_adjusted": 2.6e-05,
             "significant": True},
            {"variant": "red_packet", "control": "control", "abs": 0.0297, "abs_ci": [-0.0027, 0.0621],
             "rel": 0.185, "rel_ci": [-0.0097, 0.4164], "p_value": 0.052, "p_adjusted": 0.052,
             "significant": False},
        ],
        "touches": [
            {"touch": "coupon_push", "variant": "coupon", "outcome": "sent", "reason": None, "count": 2590},
            {"touch": "coupon_push", "variant": "coupon", "outcome": "failed", "reason": "HTTP 400: bad token",
             "count": 14},
            {"touch": "red_packet_sms", "variant": "red_packet", "outcome": "sent", "reason": None, "count": 2581},
            {"touch": "-", "variant": "control", "outcome": "holdout", "reason": None, "count": 1296},
        ],
        "daily": [{"day": (date(2026, 11, 27) + timedelta(days=d)).isoformat(), "variant": v, "conversions": n}
                  for d in range(7) for v, n in (("coupon", 82), ("red_packet", 70), ("control", 30))],
        "note": None,
        "audit": {"plan": "cancelled_price_ab", "run": "manual__2026-11-27T10:00:00+00:00",
                  "plan_file": "/opt/airflow/dags/plans/growth/cancelled_price_ab.yaml",
                  "plan_sha256": "9f2c4e0b7a1d3c5e8f6a2b4d1c3e5f7a9b0c2d4e6f8a1b3c5d7e9f0a2b4c6d8e",
                  "git_commit": "fd41c0c1b2a3d4e5f60718293a4b5c6d7e8f9a0b", "git_dirty": False,
                  "segments": {"cancelled_for_reason.sql":
                               "5b1e0c9d2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f2a4b6c"},
                  "trigger": "manual", "triggered_by": "alice",
                  "params": {"dry_run": False, "sample": None, "only_touches": []},
                  "code": {"c2b": "0.1.0", "engine_sha256": "3a5c7e9b1d2f4a6c", "airflow": "3.3.2"},
                  "line": "growth", "recorded_at": "2026-11-27T10:00:02+00:00",
                  "reported_at": "2026-11-27T10:01:15+00:00", "status": "complete"},
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None, kind: str) -> str:
    return _pct(x, 2) if kind == "rate" else ("-" if x is None else f"{x:,.2f}")


def format_page(page: dict[str, Any]) -> str:
    """Return the page as the text table ``c2b results`` and ``make demo`` print."""
    kind = page["metric"]["kind"]
    srm = page["srm"]
    verdict = ("not tested (one variant)" if srm["ok"] is None else
               f"{'ok' if srm['ok'] else 'MISMATCH'} (p = {srm['p_value']:.3g}; flagged below 0.001)")
    what = "users converted / assigned" if kind == "rate" else "mean value per assigned user"
    lines = [f"results  plan {page['plan_id']}, run {page['run_id']}",
             f"  metric       {page['metric']['name']} ({what}), window {page['window_days']} days, "
             f"{page['days_since_send']:g} days since the send; {page['method']} 95% intervals",
             f"  intervals    {page.get('method_detail') or page['method']}",
             "  split (SRM)  " + verdict + ": "
             + ", ".join(f"{v} {n:,} (expected {100 * srm['expected'].get(v, 0):.0f}%)"
                         for v, n in srm["observed"].items()),
             f"  {'variant':<20} {'assigned':>9} {'reached':>9} {'converted':>9}  {'rate':>8}  95% interval"]
    for v in page["variants"]:
        lo, hi = v["rate_ci"]
        name = v["name"] + (" (control)" if v["is_control"] else "")
        lines.append(f"  {name:<20} {v['assigned']:>9,} {v['reached']:>9,} {v['converted']:>9,}  "
                     f"{_num(v['rate'], kind):>8}  [{_num(lo, kind)}, {_num(hi, kind)}]")
    for u in page["uplifts"]:
        (lo, hi), (rlo, rhi) = u["abs_ci"], u["rel_ci"]
        if kind == "rate" and None not in (u["abs"], lo, hi):
            absolute = f"{100 * u['abs']:+.2f} pp [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        else:
            absolute = f"{_num(u['abs'], 'value')} [{_num(lo, 'value')}, {_num(hi, 'value')}]"
        relative = "-" if u["rel"] is None else f"{_pct(u['rel'])} [{_pct(rlo)}, {_pct(rhi)}]"
        p = "-" if u["p_adjusted"] is None else f"{u['p_adjusted']:.3g}"
        lines.append(f"  uplift       {u['variant']} vs {u['control']}: {absolute}, relative {relative}, "
                     f"p (Holm) {p} -> {'SIGNIFICANT' if u['significant'] else 'not significant'}")
    if page["note"]:
        lines.append(f"  note         {page['note']}")
    if page.get("audit"):
        from c2b.results.audit import render_audit

        lines += ["  audit        " + line for line in render_audit(page["audit"])]
    else:
        lines.append("  audit        none stored (the run's report task has not run)")
    return "\n".join(lines)
