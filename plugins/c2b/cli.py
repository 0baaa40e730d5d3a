"""``c2b`` (or ``python -m c2b``): validate plans, write their JSON Schema, preview an audience, run the demo,
flip the kill switch, show a run report or its results, manage suppression lists."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from c2b.settings import PROJECT_ROOT, data_dir, outbox_dir, reports_dir, safe_name

if TYPE_CHECKING:
    from c2b.plan.errors import PlanError

PLANS_DIR = PROJECT_ROOT / "dags" / "plans"


def cmd_demo(args: argparse.Namespace) -> int:
    """Run one plan's DAG in-process with ``dag.test()`` (recorded in the Airflow DB) and summarize."""
    from c2b.airflow.dag_factory import build_dags

    dags, errors = build_dags(PLANS_DIR, args.plan)
    for err in errors:
        print(err, file=sys.stderr)
    if args.plan not in dags:
        print(f"no valid plan {args.plan!r} in {PLANS_DIR}", file=sys.stderr)
        return 2
    if not args.wait and not args.dry_run and (why := _closed_now(args.plan)):
        print(why, file=sys.stderr)
        return 3
    if not args.keep_history:
        # The demo runs the same plan on the same users again and again: without this, re-entry
        # (a plan reaches a user again only after N days) would leave the second run empty.
        from c2b.airflow.resources import get_redis
        from c2b.delivery.reentry import forget_history

        if forgotten := forget_history(get_redis(), args.plan):
            print(f"demo: forgot plan {args.plan}'s re-entry history of {forgotten:,} users, so this run reaches "
                  "them again (--keep-history keeps it)")
        # Likewise the line's frequency caps (3 a day, 10 a week for growth) would cap a demo run again and again.
        from c2b.airflow.dag_factory import plan_of
        from c2b.delivery.controls.frequency_cap import forget_counts, rules_of

        scope = rules_of(plan_of(dags[args.plan])).scope
        if forgotten := forget_counts(get_redis(), scope):
            print(f"demo: forgot line {scope}'s frequency-cap counts ({forgotten:,} user-days), so its caps start "
                  "from zero (--keep-history keeps them)")
    log_file = data_dir() / "demo.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(f"running plan {args.plan} with dag.test() (task logs: {log_file}) ...", flush=True)
    started = time.monotonic()
    with _output_to(log_file, enabled=not args.verbose):
        dr = dags[args.plan].test(run_conf={"dry_run": args.dry_run} if args.dry_run else None)
    took = time.monotonic() - started
    state = str(getattr(dr.state, "value", dr.state))
    report_file = reports_dir() / args.plan / f"{safe_name(dr.run_id)}.json"
    if state != "success" or not report_file.exists():
        print(f"\nrun {dr.run_id} ended {state}; task logs: {log_file}", file=sys.stderr)
        if not args.verbose:
            from c2b.results.task_errors import failed_task_errors

            for line in failed_task_errors(log_file.read_text(encoding="utf-8", errors="replace")):
                print(f"  failed: {line}", file=sys.stderr)
        return 1
    print(render_summary(json.loads(report_file.read_text()), took, report_file))
    if not args.dry_run:
        return demo_results(args.plan, dr.run_id)
    return 0


def demo_results(plan_id: str, run_id: str) -> int:
    """Advance the demo clock past the run's attribution window and print its results table.

    The demo warehouse gains the orders the run's users place in the week after their touch
    (:func:`devtools.demo_warehouse.add_post_touch_orders`: planted uplifts per offer), then
    attribution runs as of the end of the window, as the daily results DAG would a week later.
    """
    from datetime import timedelta

    from c2b.airflow import resources
    from c2b.airflow.dag_factory import find_plan_file
    from c2b.audience.warehouse import DuckDBWarehouse
    from c2b.plan.load import load_plan
    from c2b.results.attribution import attribute
    from c2b.results.page import format_page, results_page

    plan = load_plan(find_plan_file(PLANS_DIR, plan_id))
    if plan.goal is None:
        return 0
    store, warehouse = resources.get_results_store(), resources.get_warehouse()
    users = store.log_users(plan_id, run_id)
    if not isinstance(warehouse, DuckDBWarehouse) or not users:
        print("\n(no post-touch simulation: the demo clock advances only on the DuckDB demo warehouse)")
        return 0
    from devtools.demo_warehouse import add_post_touch_orders

    offers = {t.name: t.offer.type for t in plan.touches if t.offer}
    reached: dict[str, str] = {}
    for uid, touch in store.sent_touches(plan_id, run_id):
        if touch in offers:
            reached[uid] = offers[touch]
    orders = add_post_touch_orders(warehouse.path, plan_id, run_id, [(u, reached.get(u), t) for u, _, t, _ in users])
    clock = max(t for _, _, t, _ in users) + timedelta(days=plan.goal.window_days, minutes=1)
    with _output_to(data_dir() / "results.log"):
        attribute(plan, run_id, store, warehouse, as_of=clock)
    print(f"\ndemo clock advanced to {clock:%Y-%m-%d %H:%M} UTC (the end of the {plan.goal.window_days}-day window): "
          f"{orders:,} post-touch orders simulated\n")
    print(format_page(results_page(plan_id, run_id, store)))
    return 0


def _closed_now(plan_id: str) -> str:
    """Say why a demo run of the plan would wait now (outside its send window), or return ''.

    Deliveries outside ``send_hours`` reschedule themselves until the window opens, and
    ``dag.test()`` waits with them: tell the user instead of sitting silent until the morning.
    """
    from datetime import datetime, timedelta

    from c2b.airflow.dag_factory import find_plan_file
    from c2b.delivery.controls.quiet_hours import SendWindow
    from c2b.plan.load import load_plan

    window = SendWindow.of(load_plan(find_plan_file(PLANS_DIR, plan_id)).window)
    now = datetime.now(UTC)
    opens = window.next_open(now)
    if opens is not None and opens - now < timedelta(minutes=1):
        return ""
    when = f"opens at {opens.astimezone(window.zone(None)):%Y-%m-%d %H:%M %Z}" if opens else "has closed for good"
    return (f"plan {plan_id}'s send window ({window.send_hours or 'dates'}, {window.default_tz}) {when}: "
            "deliveries would wait for it. Use --dry-run to run everything but the sends, --wait to "
            "wait, or trigger it in the Airflow UI (`make ui`).")


@contextlib.contextmanager
def _output_to(path: Path, enabled: bool = True) -> Iterator[None]:
    """Send this process's stdout and stderr (Airflow's task logs) to ``path`` for a while."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def render_extras(s: dict) -> list[str]:
    """Return the report's offer budget and audit lines (see :mod:`c2b.results.audit`)."""
    from c2b.results.audit import render_audit

    out = []
    for touch, b in (s.get("budgets") or {}).items():
        cap = " / ".join(x for x in (b.get("coupons_cap") and f"{b['coupons_cap']} coupons",
                                     b.get("amount_cap") and f"{b['amount_cap']} amount") if x)
        out.append(f"  budget       {touch}: {b.get('coupons', '?')} coupons, {b.get('amount', '?')} reserved of "
                   f"{cap or '?'} (per {b['per']})" + (f"; SPENT: {b['budget_exhausted']:,} users not sent"
                                                       if b["exhausted"] else ""))
    if s.get("audit"):
        out += ["  audit        " + line for line in render_audit(s["audit"])]
    return out


def render_summary(s: dict, took: float, report_file: Path) -> str:
    a = s["audience"]
    lines = [
        "",
        f"c2b demo: plan {s['plan']}, run {s['run']} -> {s['status']}",
        (f"  audience     {a['kept']:,} users kept of {a['rows']:,} rows " if a["kept"] else
         f"  audience     0 users (empty audience, nothing delivered) of {a['rows']:,} rows ")
        + f"(null uid {a['null_uid']}, malformed {a['malformed_uid']}, duplicate {a['duplicate_uid']}, "
        f"excluded {a.get('excluded', 0)}"
        + "".join(f", {k} {n}" for k, n in a.get("excluded_by", {}).items())
        + f", global holdout {a.get('global_holdout', 0)}, not re-entered {a.get('not_reentered', 0)}"
        + f", over limit {a['over_limit']})",
        "  variants     " + ", ".join(f"{v} {n:,}" for v, n in a["per_variant"].items()),
        f"  shards       {len(s['shards']['loaded'])} non-empty, delivered {len(s['shards']['delivered'])}"
        + (f", stopped {s['shards']['stopped']}" if s["shards"]["stopped"] else ""),
        "  messages     variant / touch / outcome:",
    ]
    for key, n in s["outcomes"].items():
        v, t, o = key.split("|")
        lines.append(f"                 {v:<10} {t:<16} {o:<14} {n:>8,}")
    if s["failures"]:
        lines.append("  failures     " + ", ".join(f"{r}: {n}" for r, n in s["failures"].items()))
    lines += render_extras(s)
    outbox = outbox_dir() / s["plan"] / safe_name(s["run"])
    lines += [
        f"  run time     {took:.1f} s (dag.test, whole DAG)",
        f"  outbox       {outbox}/",
        f"  staging      {s['staging_path']} (deleted by the run's cleanup)",
        f"  report       {report_file}",
        "",
        "Open the Airflow UI on this same state with `make ui`, then http://127.0.0.1:8080/dags/"
        f"{s['plan']} (the run above is listed there).",
    ]
    return "\n".join(lines)


def plan_paths(paths: list[str]) -> list[Path]:
    """Expand folders to their ``*.yaml`` plan files (not a plan index); keep files as given."""
    from c2b.airflow.dag_factory import is_plan_index, plan_files

    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        out += [f for f in plan_files(p) if not is_plan_index(f)] if p.is_dir() else [p]
    return out


def validate_paths(paths: list[Path]) -> tuple[dict[str, Path], list[PlanError]]:
    """Validate plan files; return the valid plans' ids (-> file) and every error.

    Checks each file fully (as the DAG factory does) and, across files, that plan ids are unique.
    """
    from c2b.plan.errors import PlanError
    from c2b.plan.lines import with_line
    from c2b.plan.load import load_plan

    ok: dict[str, Path] = {}
    errors: list[PlanError] = []
    for path in paths:
        try:
            plan = with_line(load_plan(path, check_name=True), path)
        except PlanError as exc:
            errors.append(exc)
            continue
        if plan.id in ok:
            errors.append(PlanError(path, [("id", f"{plan.id!r} is also the id of {ok[plan.id]}; plan ids must be "
                                                  "unique (they are DAG ids)")]))
            continue
        ok[plan.id] = path
    return ok, errors


def cmd_validate(args: argparse.Namespace) -> int:
    """Print every problem of the plan files as ``<file>: <field>: <fix> (line N)``; exit 1 if any."""
    paths = plan_paths(args.paths or [str(PLANS_DIR)])
    if not paths:
        print(f"no plan files (*.yaml) in {' '.join(args.paths or [str(PLANS_DIR)])}", file=sys.stderr)
        return 2
    ok, errors = validate_paths(paths)
    for err in errors:
        print(err)
    if not args.quiet:
        print(f"{len(ok)} plan(s) valid, {len(errors)} with errors", file=sys.stderr)
    return 1 if errors else 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Write the plan JSON Schema (point your editor's YAML language server at it), or with
    ``--markdown`` the field reference generated from it (docs/plan-reference.md)."""
    from c2b.plan.model import plan_json_schema
    from c2b.plan.reference import render_reference

    schema = plan_json_schema()
    text = render_reference(schema) if args.markdown else json.dumps(schema, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _preview_warehouse(path: str | None):  # -> c2b.audience.warehouse.Warehouse
    import os

    from c2b.audience.warehouse import DuckDBWarehouse

    path = path or os.environ.get("C2B_WAREHOUSE")
    if path:
        return DuckDBWarehouse(path)
    from c2b.airflow import resources

    return resources.get_warehouse()


def cmd_preview(args: argparse.Namespace) -> int:
    """Show the audience per variant a run would get now: segment and assignment only, no sends."""
    import tempfile

    from c2b.airflow.dag_factory import find_plan_file
    from c2b.audience.extract import extract_audience
    from c2b.plan.errors import PlanError
    from c2b.plan.load import load_plan

    path = Path(args.plan) if args.plan.endswith(".yaml") else find_plan_file(PLANS_DIR, args.plan)
    try:
        plan = load_plan(path, check_name=True)
    except PlanError as exc:
        print(exc, file=sys.stderr)
        return 1
    # Suppression lists and contact history live in Redis, which a preview does not touch.
    skipped = [e.label for e in plan.audience.exclude if e.segment is None]
    preview = plan.model_copy(update={"audience": plan.audience.model_copy(
        update={"exclude": [e for e in plan.audience.exclude if e.segment is not None]})})
    warehouse = _preview_warehouse(args.warehouse)  # a missing connection is main()'s message, exit 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="c2b-preview-") as tmp:
        try:
            result = extract_audience(preview, warehouse, Path(tmp) / "preview.parquet",
                                      sample=args.sample)
        except Exception as exc:  # noqa: BLE001 - the warehouse's error, as one line, not a traceback
            from c2b.results.task_errors import error_line

            print(f"preview of {plan.id} failed: {error_line(exc)}", file=sys.stderr)
            return 1
    counts = result.to_xcom()["counts"]
    print(render_preview(plan, counts, time.monotonic() - started))
    if skipped:
        print(f"  not applied  {', '.join(skipped)} (kept in Redis: a run applies them)")
    return 0


def render_preview(plan, counts: dict, took: float) -> str:  # type: ignore[no-untyped-def]
    """Format audience counts per variant, with the messages each touch would send."""
    per_variant: dict[str, int] = counts.get("per_variant", {})
    kept = int(counts.get("kept", 0))
    lines = [f"plan {plan.id}: segment {plan.audience.segment} {dict(plan.audience.params)}",
             "  audience     " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()
                                          if isinstance(v, int)),
             "  variant      users     share  touches"]
    for name, n in per_variant.items():
        touches = ", ".join(f"{t.name} ({t.channel})" for t in plan.touches_of(name)) or "holdout"
        lines.append(f"  {name:<12} {n:>8,}  {100 * n / kept if kept else 0:>6.1f}%  {touches}")
    sends: dict[str, int] = {}
    for name, n in per_variant.items():
        for t in plan.touches_of(name):
            sends[t.name] = sends.get(t.name, 0) + n
    lines.append("  messages     " + (", ".join(f"{t} {n:,}" for t, n in sends.items()) or "none"))
    lines.append(f"  took         {took:.1f} s (warehouse only: nothing loaded to Redis, nothing sent)")
    return "\n".join(lines)


def cmd_kill(args: argparse.Namespace) -> int:
    """Turn the Redis kill flag of a plan (or ``all``) on or off, or list the flags that are on."""
    from c2b.delivery.controls.kill_switch import VARIABLE, flags_on, set_flag

    r = _redis(args)
    if args.status or not args.plan:
        on = flags_on(r)
        print("kill switches on (Redis): " + (", ".join(on) if on else "none"))
        print(f"(the Airflow Variable {VARIABLE} can stop plans too: `airflow variables get {VARIABLE}`)")
        return 0
    key = set_flag(r, args.plan, on=not args.off)
    if args.off:
        print(f"kill switch {key} is off. Shards stopped by it resume without re-sending when you Clear "
              "the whole run in Airflow (its cleanup dropped the shard keys; the ledger prevents repeats).")
    else:
        scope = "every plan" if args.plan == "all" else f"plan {args.plan}"
        print(f"kill switch {key} is on: every running shard of {scope} stops before its next page; "
              "its deliver tasks fail with 'STOPPED by the kill switch'.")
    return 0


def cmd_lines(args: argparse.Namespace) -> int:
    """List the business lines (dags/plans/<line>/line.yaml) with their settings and plans."""
    from c2b.airflow.dag_factory import plan_files
    from c2b.plan.lines import LINE_FILE, line_of

    folder = Path(args.folder) if args.folder else PLANS_DIR
    status = 0
    for settings in sorted(folder.glob(f"*/{LINE_FILE}")):
        plans = [p for p in plan_files(folder) if p.parent == settings.parent]
        try:
            line = line_of(settings.parent / "_.yaml")
        except ValueError as exc:  # a PlanError naming the line file and field
            print(exc, file=sys.stderr)
            status = 1
            continue
        assert line is not None
        s = line.settings
        if args.pools:
            if s.pool:
                print(f"{s.pool} {line.name}")
            continue
        holdout = f"{s.global_holdout.share:.2%} (salt {s.global_holdout.salt})" if s.global_holdout else "none"
        print(f"{line.name}: owners {', '.join(s.owners)}; pool {s.pool or 'default_pool'}; "
              f"frequency cap {line.caps.describe()}; "
              f"global holdout {holdout}; connections {', '.join(s.connections or ['any'])}; "
              f"plans {', '.join(p.stem for p in plans) or 'none'}")
    return status


def cmd_audit(args: argparse.Namespace) -> int:
    """List a plan's runs with their audit records, oldest first.

    The results store (``c2b_audit``, written by each run's report task) is the record. Report
    files are read only for runs the store lacks (reported before the audit was stored there,
    or written by another store): those lines say ``(report file)``.
    """
    from c2b.airflow import resources
    from c2b.results.audit import audit_rows

    store = resources.get_results_store()
    rows = [{**r, "source": "results store"} for r in store.audits(args.plan)]
    stored = {r["run"] for r in rows}
    folder = reports_dir() / args.plan
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    rows += [{**r, "source": "report file"} for r in audit_rows(files) if r.get("run") not in stored]
    rows.sort(key=lambda r: str(r.get("recorded_at") or ""))  # oldest first (UTC ISO text in both sources)
    if not rows:
        print(f"c2b audit: plan {args.plan!r} has no reported run: none in the results store ({store.name}) "
              f"and no run report under {folder}; run it first (`make demo`, or trigger its DAG)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
        return 0
    print(f"audit trail of {args.plan} (results store {store.name})")
    for r in rows:
        source = "" if r["source"] == "results store" else "  (report file)"
        if "plan_sha256" not in r:
            print(f"{r['run']}  {r.get('status')}  (no audit record: run before the audit trail existed){source}")
            continue
        commit = r.get("git_commit")
        print(f"{r['run']}  {r.get('status')}  {r.get('recorded_at')}  plan {str(r['plan_sha256'])[:12]}  "
              f"commit {commit[:12] if commit else 'none'}{'+modified' if r.get('git_dirty') else ''}  "
              f"by {r.get('triggered_by')} ({r.get('trigger')})  params {json.dumps(r.get('params'), sort_keys=True)}  "
              f"segments {' '.join(f'{k}:{str(v)[:8]}' for k, v in (r.get('segments') or {}).items())}  "
              f"code {(r.get('code') or {}).get('c2b')}/{(r.get('code') or {}).get('engine_sha256')}"
              + (f"  line {r['line']}" if r.get("line") else "") + source)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    folder = reports_dir() / args.plan
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        print(f"no reports under {folder}", file=sys.stderr)
        return 1
    from c2b.results.report import format_table

    summary = json.loads(files[-1].read_text())
    print("\n".join([str(files[-1]), format_table(summary), *render_extras(summary)]))
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Print a run's results table (conversions, uplift, SRM) from the results store."""
    from c2b.airflow import resources
    from c2b.results.attribution import AttributionError, attribute
    from c2b.results.page import format_page, results_page

    store = resources.get_results_store()
    try:
        if args.attribute:
            from c2b.airflow.dag_factory import find_plan_file
            from c2b.plan.errors import PlanError
            from c2b.plan.load import load_plan

            try:
                plan = load_plan(find_plan_file(PLANS_DIR, args.plan))
            except PlanError as exc:
                print(exc, file=sys.stderr)
                return 1
            run_id = args.run or (store.runs(args.plan)[-1][0] if store.runs(args.plan) else None)
            if run_id is None:
                raise LookupError(f"plan {args.plan!r} has no delivered run in the results store ({store.name})")
            attribute(plan, run_id, store, resources.get_warehouse())
        page = results_page(args.plan, args.run, store)
    except (LookupError, AttributionError) as exc:
        print(f"c2b results: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(page, indent=2) if args.json else format_page(page))
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    """Manage a suppression list, sharded in Redis (c2b.store.suppression); read by exclusions at
    extract and by every page at send time."""
    import re

    from c2b.store import suppression

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        print(f"bad list name {args.name!r}: use letters, digits, '_', '.', '-'", file=sys.stderr)
        return 2
    r = _redis(args)
    if args.action == "list":
        n = 0
        for member in suppression.members(r, args.name):
            print(member)
            n += 1
        print(f"{n} uid(s) in suppression list {args.name}", file=sys.stderr)
        return 0
    uids = list(args.uids)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with stream:
            uids += [line.strip() for line in stream if line.strip()]
    if not uids:
        print("no uids given (as arguments or --file)", file=sys.stderr)
        return 2
    op = suppression.add if args.action == "add" else suppression.remove
    changed = op(r, args.name, uids)
    verb = "added to" if args.action == "add" else "removed from"
    print(f"{changed} uid(s) {verb} suppression list {args.name} ({suppression.count(r, args.name)} now)")
    return 0


def _redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="Redis URL (default: $C2B_REDIS_URL, else the c2b_redis Airflow connection)")
    parser.add_argument("--cluster", action="store_true", help="the URL points at a Redis Cluster node")


def _redis(args: argparse.Namespace):
    """Return the Redis of the store: ``--url`` / C2B_REDIS_URL, else the ``c2b_redis`` Airflow connection."""
    import os

    url = args.url or os.environ.get("C2B_REDIS_URL")
    if url:
        import redis

        if args.cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(url)
        return redis.Redis.from_url(url)
    from c2b.airflow.resources import get_redis

    return get_redis()


def cmd_store_check(args: argparse.Namespace) -> int:
    """Report the keys of one run: layout, largest key (MEMORY USAGE and members), TTLs, bound."""
    from c2b.store.shards import inspect_run

    check = inspect_run(_redis(args), args.plan, args.run_id, args.shards)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2, default=str))
        return 1 if check.problems else 0
    lay = check.layout or {}
    print(f"run {args.plan} / {args.run_id}: encoding {lay.get('encoding', '?')}, {lay.get('shards', '?')} shards, "
          f"{lay.get('members', '?')} members, load state {lay.get('state', 'missing')}, "
          f"bound {lay.get('max_shard_members', '?')} members per key")
    total = sum(k.bytes for k in check.keys)
    print(f"keys: {len(check.keys)}, {total:,} bytes (MEMORY USAGE)")
    for label, k in (("largest key by memory ", check.largest_by_bytes),
                     ("largest key by members", check.largest_by_members)):
        if k is not None:
            ttl = f"{k.ttl / 3600:.1f} h" if k.ttl >= 0 else "none"
            print(f"{label}: {k.key}  {k.kind}  {k.members:,} members  {k.bytes:,} bytes  TTL {ttl}")
    print("problems: " + ("none" if not check.problems else "\n  " + "\n  ".join(check.problems)))
    return 1 if check.problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="c2b", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="run a plan end to end with dag.test() and print a summary")
    p.add_argument("--plan", default="cancelled_price_coupon")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--keep-history", action="store_true",
                   help="keep the plan's re-entry history and its line's frequency-cap counts (by default the "
                        "demo forgets both, so a rerun reaches the same users)")
    p.add_argument("--wait", action="store_true",
                   help="run even outside the plan's send window (deliveries wait for it to open)")
    p.add_argument("--verbose", action="store_true", help="show Airflow's task logs instead of writing them to a file")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("validate", help="check plan files (default: dags/plans/); exit 1 on any error")
    p.add_argument("paths", nargs="*", help="plan files or folders of them")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only, no summary")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="write the plan files' JSON Schema (for editors)")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--markdown", action="store_true",
                   help="write the Markdown field reference instead (docs/plan-reference.md)")
    p.set_defaults(func=cmd_schema)
    p = sub.add_parser("preview", help="audience size per variant on the warehouse; no Redis, no sends")
    p.add_argument("plan", help="plan id (dags/plans/<id>.yaml) or a plan file path")
    p.add_argument("--warehouse", help="DuckDB file (default: $C2B_WAREHOUSE, else the c2b_warehouse connection)")
    p.add_argument("--sample", type=int, default=None, help="stop after N users, like the trigger param")
    p.set_defaults(func=cmd_preview)
    p = sub.add_parser("kill", help="turn a kill switch on (or --off) for a plan id or 'all'; --status lists them")
    p.add_argument("plan", nargs="?", help="a plan id, or 'all' for every plan")
    p.add_argument("--off", action="store_true", help="release the switch")
    p.add_argument("--status", action="store_true", help="list the switches that are on")
    _redis_options(p)
    p.set_defaults(func=cmd_kill)
    p = sub.add_parser("audit", help="list a plan's runs: plan hash, commit, trigger, params, segments, code")
    p.add_argument("plan", help="plan id")
    p.add_argument("--json", action="store_true", help="the full audit records as JSON")
    p.set_defaults(func=cmd_audit)
    p = sub.add_parser("lines", help="list the business lines (dags/plans/<line>/line.yaml) and their plans")
    p.add_argument("--folder", help="plans folder (default dags/plans)")
    p.add_argument("--pools", action="store_true", help="print 'POOL LINE' per line (for creating the pools)")
    p.set_defaults(func=cmd_lines)
    p = sub.add_parser("report", help="print the latest run report of a plan")
    p.add_argument("plan")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("results", help="print a run's results: conversions per variant, uplift, SRM check")
    p.add_argument("plan")
    p.add_argument("--run", help="run id (default: the plan's latest delivered run)")
    p.add_argument("--attribute", action="store_true", help="count conversions now (on the warehouse) first")
    p.add_argument("--json", action="store_true", help="print the page as JSON (what the UI view reads)")
    p.set_defaults(func=cmd_results)
    p = sub.add_parser("suppress", help="add, remove or list the uids of a suppression list")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("name", help="list name; plans exclude it with {suppression_list: NAME}")
    p.add_argument("uids", nargs="*", help="uids to add or remove")
    p.add_argument("--file", help="read more uids from this file, one per line ('-' for stdin)")
    _redis_options(p)
    p.set_defaults(func=cmd_suppress)
    p = sub.add_parser("store-check", help="report a run's shard keys: largest key, TTLs, member bound")
    p.add_argument("plan")
    p.add_argument("run_id")
    _redis_options(p)
    p.add_argument("--shards", type=int, default=None, help="also look at shards up to N (default: the run's meta)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_check)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as exc:  # noqa: BLE001 - a user sees one line; C2B_TRACEBACK=1 shows the rest
        if type(exc).__name__ == "AirflowNotFoundException":  # (no Airflow import unless it raised)
            # A command reached for an Airflow Connection (c2b_redis, c2b_warehouse) that is not defined.
            print(f"c2b {args.cmd}: {exc}. Define that Airflow Connection (e.g. the environment variable "
                  "AIRFLOW_CONN_<ID in capitals>), pass the command's --url or --warehouse, or run it as "
                  "`scripts/dev.sh run c2b ...`, which sets the local demo's connections.", file=sys.stderr)
            return 2
        if os.environ.get("C2B_TRACEBACK"):
            raise
        from c2b.results.task_errors import error_line

        print(f"c2b {args.cmd}: {error_line(exc)} (C2B_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1
