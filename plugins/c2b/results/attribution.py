"""Attribution: conversions per variant within the window after each user's touch, and the page.

For every goal metric of the plan, the goal SQL runs on the plan's warehouse with ``:since`` and
``:until`` bound to the range the run can need (its first touch .. its last touch + window, never
past the clock). Its events stream in Arrow batches into an in-memory DuckDB, keeping only events
of the run's users; then one query counts, per user, the events in ``[touched_at, touched_at +
window)`` and before the clock. A user's ``touched_at`` is the earliest time of their delivery-log
rows; holdout users carry the time their shard-mates were touched (:mod:`c2b.results.delivery_log`),
so control and treatment are measured on the same clock.

Idempotent: the result depends only on the delivery log, the warehouse and the clock (``as_of``,
the results DAG run's data interval end), and it replaces the stored one unless that was computed
at a later clock. Events without a uid or a time are counted (``events_bad``), never dropped silently.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from c2b.plan.goal import RESERVED_PARAMS, Goal, GoalMetric, goal_note, goal_path
from c2b.plan.model import Plan
from c2b.results import group_sequential, stats
from c2b.results.store import ResultsStore

log = logging.getLogger(__name__)

EVENT_BATCH_ROWS = 100_000


class AttributionError(ValueError):
    """Attribution cannot run: no delivery log, no goal, or a goal SQL that returns the wrong shape."""


def naive_utc(t: datetime) -> datetime:
    """Return ``t`` as naive UTC (what the results store keeps); naive input is taken as UTC."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t


def goal_info(goal: Goal | None) -> dict[str, Any] | None:
    """Return what the page needs to know of a goal, kept with the run in the store."""
    if goal is None:
        return None
    return {"primary": goal.primary_name, "kind": goal.primary_metric.kind, "method": goal.method,
            "window_days": goal.window_days, "metrics": {n: m.kind for n, m in goal.metrics.items()}}


def attribute(plan: Plan, run_id: str, store: ResultsStore, warehouse: Any, as_of: datetime | None = None
              ) -> dict[str, dict[str, Any]]:
    """Count the run's conversions for every goal metric, store them, and return them by metric."""
    if plan.goal is None:
        raise AttributionError(f"plan {plan.id} has no goal: add a 'goal:' section to measure conversions")
    users = store.log_users(plan.id, run_id)
    if not users:
        raise AttributionError(f"no delivery log for plan {plan.id} run {run_id} in {store.name}: the run did not "
                               "deliver (or was a dry run), or the store is not the one its deliver tasks wrote to")
    clock = naive_utc(as_of or datetime.now(UTC))
    window = timedelta(days=plan.goal.window_days)
    first = min(u[2] for u in users)
    last = max(u[2] for u in users)
    table = pa.table({"uid": [u[0] for u in users], "variant": [u[1] for u in users],
                      "touched_at": pa.array([u[2] for u in users], pa.timestamp("us")),
                      "reached": pa.array([u[3] for u in users], pa.int8())})
    out: dict[str, dict[str, Any]] = {}
    for name, metric in plan.goal.metrics.items():
        payload = _attribute_metric(plan, name, metric, table, warehouse, first, min(clock, last + window), clock)
        payload["primary"] = name == plan.goal.primary_name
        store.save_result(plan.id, run_id, name, clock, payload, naive_utc(datetime.now(UTC)))
        out[name] = payload
        log.info("%s / %s: %s converted per variant %s (as of %s)", plan.id, run_id, name,
                 {v: a["converted"] for v, a in payload["variants"].items()}, clock)
    store.register_run(plan.id, run_id, plan.variant_weights, _controls(plan), first, goal_info(plan.goal))
    return out


def _controls(plan: Plan) -> list[str]:
    return [n for n, v in plan.experiment.variants.items() if v.control] if plan.experiment else []


def _attribute_metric(plan: Plan, name: str, metric: GoalMetric, users: pa.Table, warehouse: Any,
                      since: datetime, until: datetime, clock: datetime) -> dict[str, Any]:
    import duckdb

    from c2b.audience.sql import placeholders

    sql = goal_path(metric.sql).read_text(encoding="utf-8")
    used = set(placeholders(sql))
    params = {**metric.params, **{k: v for k, v in (("since", since), ("until", until)) if k in used}}
    assert plan.goal is not None
    window_days = plan.goal.window_days
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("run_users", users)
        con.execute("CREATE TABLE events (uid VARCHAR, event_time TIMESTAMP, value DOUBLE)")
        read = bad = 0
        for batch in warehouse.record_batches(sql, params, EVENT_BATCH_ROWS):
            names = batch.schema.names
            missing = [c for c in ("uid", "event_time") if c not in names]
            if missing:
                raise AttributionError(f"goal {metric.sql} (metric {name}) returned columns {', '.join(names)}; "
                                       f"it must return {' and '.join(missing)} (see its '-- columns:' header)")
            if batch.num_rows == 0:
                continue
            read += batch.num_rows
            con.register("goal_batch", batch)
            value = "CAST(b.value AS DOUBLE)" if "value" in names else "NULL"
            bad += con.execute("SELECT COUNT(*) FROM goal_batch b WHERE b.uid IS NULL OR b.event_time IS NULL"
                               ).fetchall()[0][0]
            con.execute(f"INSERT INTO events SELECT CAST(b.uid AS VARCHAR), CAST(b.event_time AS TIMESTAMP), "
                        f"{value} FROM goal_batch b WHERE b.uid IS NOT NULL AND b.event_time IS NOT NULL "
                        "AND CAST(b.uid AS VARCHAR) IN (SELECT uid FROM run_users)")
            con.unregister("goal_batch")
        if bad:
            log.warning("goal %s: %s events without uid or event_time were not counted", metric.sql, bad)
        per_user = f"""
            SELECT u.uid, u.variant, u.touched_at, MIN(e.event_time) AS first_event,
                   COALESCE(SUM(e.value), 0) AS value
            FROM run_users u JOIN events e ON e.uid = u.uid
            WHERE e.event_time >= u.touched_at
              AND e.event_time < u.touched_at + INTERVAL {int(window_days)} DAY
              AND e.event_time < $clock
            GROUP BY u.uid, u.variant, u.touched_at"""
        rows = con.execute(f"""
            WITH conv AS ({per_user})
            SELECT u.variant, COUNT(*) AS assigned, SUM(u.reached) AS reached, COUNT(c.uid) AS converted,
                   COALESCE(SUM(c.value), 0) AS value_sum, COALESCE(SUM(c.value * c.value), 0) AS value_squares
            FROM run_users u LEFT JOIN conv c ON c.uid = u.uid
            GROUP BY u.variant ORDER BY u.variant""", {"clock": clock}).fetchall()
        daily = con.execute(f"""
            WITH conv AS ({per_user})
            SELECT CAST(first_event AS DATE) AS day, variant, COUNT(*) FROM conv
            GROUP BY day, variant ORDER BY day, variant""", {"clock": clock}).fetchall()
    finally:
        con.close()
    return {
        "metric": name, "kind": metric.kind, "sql": metric.sql, "window_days": window_days,
        "as_of": clock.isoformat(), "first_touch": since.isoformat(),
        "variants": {v: {"assigned": int(a), "reached": int(r), "converted": int(c), "value_sum": float(s),
                         "value_squares": float(q)} for v, a, r, c, s, q in rows},
        "daily": [{"day": d.isoformat(), "variant": v, "conversions": int(n)} for d, v, n in daily],
        "events_read": read, "events_bad": bad,
    }


# --- the page (c2b.results.page) -------------------------------------------------------------------

def build_page(store: ResultsStore, plan_id: str, run_id: str | None = None) -> dict[str, Any]:
    """Assemble the results page of a run from the store (see :mod:`c2b.results.page` for its shape)."""
    runs = store.runs(plan_id)
    if not runs:
        raise LookupError(f"plan {plan_id!r} has no delivered run in the results store ({store.name}); run it first "
                          "(`make demo`, or trigger its DAG) and let its deliver tasks finish")
    known = [r for r, _ in runs]
    if run_id is None:
        run_id = known[-1]
    elif run_id not in known:
        raise LookupError(f"plan {plan_id!r} has no run {run_id!r} in the results store ({store.name}); "
                          f"its runs: {', '.join(known[-5:])}")
    info = store.run_info(plan_id, run_id) or {}
    goal = info.get("goal")
    weights: dict[str, int] = info.get("weights", {})
    controls = set(info.get("controls", []))
    counts = store.variant_counts(plan_id, run_id)
    payload = store.result(plan_id, run_id, goal["primary"]) if goal else None
    notes: list[str] = []
    if goal is None:
        notes.append(goal_note(False, bool(controls)) or "")
    elif payload is None:
        notes.append("no conversions counted yet: attribution runs daily (the plan's <plan>__results DAG) "
                     "or with `c2b results --attribute`")
    kind = goal["kind"] if goal else "rate"
    method = goal["method"] if goal else "sequential"
    window_days = int(goal["window_days"]) if goal else 0
    arms: list[stats.Arm] = []
    for name in weights:
        assigned, reached = counts.get(name, (0, 0))
        got = (payload or {}).get("variants", {}).get(name, {})
        arms.append(stats.Arm(name, assigned, int(got.get("converted", 0)), float(got.get("value_sum", 0.0)),
                              float(got.get("value_squares", 0.0)), is_control=name in controls))
    observed = {a.name: a.assigned for a in arms}
    srm_p, shares = stats.srm_test(observed, weights)
    srm_ok = None if srm_p is None else srm_p >= stats.SRM_ALPHA
    if srm_ok is False:
        notes.insert(0, f"sample ratio mismatch (p = {srm_p:.2g} < {stats.SRM_ALPHA}): the split does not match "
                        "the plan's weights, so the uplift cannot be trusted; look for users lost or added per variant")
    variants = []
    for a in arms:
        rate, ci = stats.arm_rate(a, kind) if payload else (None, [None, None])
        variants.append({"name": a.name, "is_control": a.is_control, "assigned": a.assigned,
                         "reached": counts.get(a.name, (0, 0))[1], "converted": a.converted if payload else 0,
                         "rate": rate, "rate_ci": ci})
    days = 0.0
    if payload:
        elapsed = (datetime.fromisoformat(payload["as_of"]) - datetime.fromisoformat(payload["first_touch"]))
        days = round(min(float(window_days), max(0.0, elapsed.total_seconds() / 86400)), 2)
    look = sequential_look(days, window_days)
    uplifts: list[dict[str, Any]] = []
    if payload:
        if len(controls) == 1:
            uplifts = [u.to_dict() for u in stats.uplifts(arms, kind, method, look=look, looks=max(window_days, 1))]
        else:
            notes.append(goal_note(True, False) or "" if not controls else
                         "this plan has several control groups: the page compares variants with one control only")
    return {
        "plan_id": plan_id, "run_id": run_id,
        "metric": {"name": goal["primary"] if goal else None, "kind": kind},
        "method": method, "method_detail": method_detail(method, look, window_days),
        "window_days": window_days, "days_since_send": days,
        "srm": {"p_value": _finite(srm_p), "ok": srm_ok, "expected": shares, "observed": observed},
        "variants": variants, "uplifts": uplifts,
        "touches": store.touch_outcomes(plan_id, run_id),
        "daily": (payload or {}).get("daily", []),
        "note": " ".join(notes) or None,
        "audit": store.audit(plan_id, run_id),
    }


def sequential_look(days_since_send: float, window_days: int) -> int:
    """Return the look (1-based) of the group-sequential design that attribution at this day is.

    Day ``d`` of the window (``k <= d < k + 1``) is look ``k``; a run before the end of day 1 is
    look 1 too. A second run in the same day re-uses that day's boundary; flooring (not rounding
    up) puts such an extra look on the strictest boundaries, and the final boundary only on the
    closed window.
    """
    return min(max(int(math.floor(days_since_send)), 1), max(window_days, 1))


def method_detail(method: str, look: int, window_days: int) -> str:
    """Return what the page says about its intervals: the design and this look."""
    if method != "sequential":
        return "fixed-horizon: Wald / Katz intervals, z-test (Welch for a value metric), valid read once"
    looks = max(window_days, 1)
    crit = group_sequential.boundary(look, looks)
    return f"{group_sequential.describe(looks)}; look {look} of {looks}, boundary |z| >= {crit:.3f}"


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


__all__ = ["RESERVED_PARAMS", "AttributionError", "attribute", "build_page", "goal_info"]
