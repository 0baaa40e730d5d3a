"""``c2b`` (or ``python -m c2b``): validate plans, write their JSON Schema, preview an audience, run the demo,
flip the kill switch, show a run report, manage suppression lists."""

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

from c2b.settings import PROJECT_ROOT, outbox_dir, reports_dir, safe_name

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
    log_file = reports_dir().parent / "demo.log"
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
        return 1
    print(render_summary(json.loads(report_file.read_text()), took, report_file))
    return 0


def _closed_now(plan_id: str) -> str:
    """Say why a demo run of the plan would wait now (outside its send window), or return ''.

    Deliveries outside ``send_hours`` reschedule themselves until the window opens, and
    ``dag.test()`` waits with them: tell the user instead of sitting silent until the morning.
    """
    from datetime import datetime, timedelta

    from c2b.delivery.controls.quiet_hours import SendWindow
    from c2b.plan.load import load_plan

    window = SendWindow.of(load_plan(PLANS_DIR / f"{plan_id}.yaml").window)
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
    outbox = outbox_dir() / s["plan"] / safe_name(s["run"])
    lines += [
        f"  run time     {took:.1f} s (dag.test, whole DAG)",
        f"  outbox       {outbox}/",
        f"  staging      {s['staging_path']}",
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
    from c2b.plan.load import load_plan

    ok: dict[str, Path] = {}
    errors: list[PlanError] = []
    for path in paths:
        try:
            plan = load_plan(path, check_name=True)
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
    """Write the plan JSON Schema (point your editor's YAML language server at it)."""
    from c2b.plan.model import plan_json_schema

    text = json.dumps(plan_json_schema(), indent=2) + "\n"
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

    from c2b.audience.extract import extract_audience
    from c2b.plan.errors import PlanError
    from c2b.plan.load import load_plan

    path = Path(args.plan) if args.plan.endswith(".yaml") else PLANS_DIR / f"{args.plan}.yaml"
    try:
        plan = load_plan(path, check_name=True)
    except PlanError as exc:
        print(exc, file=sys.stderr)
        return 1
    # Suppression lists and contact history live in Redis, which a preview does not touch.
    skipped = [e.label for e in plan.audience.exclude if e.segment is None]
    preview = plan.model_copy(update={"audience": plan.audience.model_copy(
        update={"exclude": [e for e in plan.audience.exclude if e.segment is not None]})})
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="c2b-preview-") as tmp:
        result = extract_audience(preview, _preview_warehouse(args.warehouse), Path(tmp) / "preview.parquet",
                                  sample=args.sample)
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
              "their failed deliver tasks (or the run) in Airflow.")
    else:
        scope = "every plan" if args.plan == "all" else f"plan {args.plan}"
        print(f"kill switch {key} is on: every running shard of {scope} stops before its next page; "
              "its deliver tasks fail with 'STOPPED by the kill switch'.")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    folder = reports_dir() / args.plan
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        print(f"no reports under {folder}", file=sys.stderr)
        return 1
    from c2b.results.report import format_table

    summary = json.loads(files[-1].read_text())
    print(f"{files[-1]}\n{format_table(summary)}")
    return 0


def cmd_suppress(args: argparse.Namespace) -> int:
    """Manage a suppression list: the Redis set ``c2b:suppression:<name>`` read by exclusions."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.name):
        print(f"bad list name {args.name!r}: use letters, digits, '_', '.', '-'", file=sys.stderr)
        return 2
    key = f"c2b:suppression:{args.name}"
    r = _redis(args)
    if args.action == "list":
        n = 0
        for member in r.sscan_iter(key, count=10_000):
            print(member.decode("utf-8", "replace"))
            n += 1
        print(f"{n} uid(s) in {key}", file=sys.stderr)
        return 0
    uids = list(args.uids)
    if args.file:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        with stream:
            uids += [line.strip() for line in stream if line.strip()]
    if not uids:
        print("no uids given (as arguments or --file)", file=sys.stderr)
        return 2
    changed = 0
    op = r.sadd if args.action == "add" else r.srem
    for i in range(0, len(uids), 10_000):
        changed += int(op(key, *uids[i:i + 10_000]))
    verb = "added to" if args.action == "add" else "removed from"
    print(f"{changed} uid(s) {verb} {key} ({r.scard(key)} now)")
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
    p = sub.add_parser("report", help="print the latest run report of a plan")
    p.add_argument("plan")
    p.set_defaults(func=cmd_report)
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
    return int(args.func(args))
