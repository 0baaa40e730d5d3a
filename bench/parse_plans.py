"""Parse cycles of a real ``airflow dag-processor``: c2b plans against astronomer dag-factory 1.1.0.

The headline is what production pays: the wall time and CPU seconds of one steady-state parse cycle
of ``airflow dag-processor`` (the process and every parse child it forks), for N plans, against
dag-factory building N equivalent DAGs on the same machine in the same run.

- **c2b**: the DAGs folder of the project (``plans.yaml``, the plan index, beside ``plans/``) with N
  plans (rotating over five segments, two touches, three variants, exclusions, a send window: every
  field is validated) plus one broken plan, which must show as its own import error (checked in
  the DB after every measurement).
- **dag-factory 1.1.0**: N equivalent YAML DAGs (the same five tasks, one mapped, PythonOperators
  whose callables are imported by dotted path) and its loader module.

How a cycle is measured. The dag-processor has no "one cycle took" figure of its own (its
``dag_processing.total_parse_time`` metric stops when the last file is *started*); ``--num-runs K``
makes it exit after parsing every file K times. With ``min_file_process_interval = 0`` (each cycle
starts as soon as the last one ends), a first run stores the DAGs; then, alternately,
``--num-runs 1`` and ``--num-runs 1+C`` runs are timed (wall clock; CPU as the children's rusage of
this process: the dag-processor plus the parse children it reaped), and one cycle is
``(T[1+C] - T[1]) / C``: start-up and the first cycle cancel out. Layouts are interleaved run by run
so load on the shared machine hits all alike; medians are reported, ratios against dag-factory.

``scripts/dev.sh run python bench/parse_plans.py [--plans 100 500] [--runs 3] [--cycles 3]`` prints
the table and writes ``bench/results/parse_plans.md`` (hand-written notes below the marker kept).
``--layout 'label=ENV=VALUE,...'`` adds a c2b layout with extra environment (``{home}`` is replaced
by the layout's Airflow home), e.g. to compare a setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.dagfactory_site import ensure_site

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "parse_plans.md"
NOTES_MARKER = "## Notes (hand-written"
AIRFLOW = str(Path(sys.executable).parent / "airflow")
C2B = "c2b plan index (one parse unit)"
DAG_FACTORY = "dag-factory 1.1.0"

SEGMENTS = [  # (segment, params, template attributes, channel pair)
    ("cancelled_for_reason.sql", {"reason": "price_too_low", "days": 30}, "{{ last_item }}", ("push", "sms")),
    ("high_value_cancellations.sql", {"min_price": 3000, "days": 14}, "{{ quoted_price }}", ("outbound_call", "sms")),
    ("new_users_by_channel.sql", {"channel": "douyin_ad", "days": 7}, "{{ acquisition_channel }}",
     ("private_domain", "push")),
    ("nps_detractors.sql", {"max_score": 6, "days": 30}, "{{ score }}", ("outbound_call", "push")),
    ("all_users.sql", {}, "{{ acquisition_channel }}", ("inapp", "push")),
]
BROKEN = "id: broken_plan\naudience: {all: true}\ntouches:\n  - {name: t, channel: emial, template: hi}\n"


def plan_yaml(i: int) -> str:
    """Return plan number ``i``: every section of the language, unique text per plan."""
    segment, params, attr, (ch1, ch2) = SEGMENTS[i % len(SEGMENTS)]
    audience = ("  all: true\n" if segment == "all_users.sql" else
                f"  segment: {segment}\n  params: {json.dumps(params)}\n")
    conn1 = "" if ch1 == "inapp" else f"    connection: c2b_{ch1}\n"
    return f"""\
id: plan_{i:04d}
description: Benchmark plan {i}, a {segment[:-4]} campaign with an A/B test.
owner: c2b-bench
tags: [bench, group_{i % 7}]
schedule: "{i % 60} {8 + i % 10} * * *"
window:
  start: 2026-01-01
  end: 2027-12-31
  send_hours: "09:00-21:00"
  timezone: Asia/Shanghai
audience:
{audience}  exclude:
    - suppression_list: marketing_opt_outs
    - contacted_within_days: {1 + i % 7}
  limit: {10000 + i}
experiment:
  salt: bench-{i}
  variants:
    first: {{weight: 45, touches: [touch_a]}}
    second: {{weight: 45, touches: [touch_b]}}
    control: {{weight: 10, control: true}}
touches:
  - name: touch_a
    channel: {ch1}
{conn1}    template: "Hi {{{{ nickname }}}} from {{{{ city }}}}: plan {i} has {{{{ offer.amount | int }}}}
      {{{{ offer.currency }}}} for you ({attr})."
    assets: {{link: "https://example.com/p/{i}", image: "https://example.com/i/{i}.png"}}
    offer: {{type: red_packet, amount: {5 + i % 20}}}
  - name: touch_b
    channel: {ch2}
    connection: c2b_{ch2}
    template: "{{% if nickname %}}{{{{ nickname | title }}}}, {{% endif %}}see {{{{ assets.link }}}} (plan {i}, {attr})"
    assets: {{link: "https://example.com/q/{i}"}}
delivery:
  shards: {2 ** (i % 6)}
  page_size: 100
  concurrency: 16
  rate_limit: 200
  retries: 2
  retry_delay_seconds: 30
  retry_backoff: 2.0
  frequency_cap: 2
"""


def dagfactory_yaml(i: int) -> str:
    """Return dag-factory's version of plan ``i``: the same five tasks, ``deliver`` mapped."""
    op = "airflow.providers.standard.operators.python.PythonOperator"
    return f"""\
plan_{i:04d}:
  default_args:
    owner: c2b-bench
    start_date: 2026-01-01
    end_date: 2027-12-31
    retries: 2
    retry_delay_sec: 30
  description: "Benchmark plan {i}, an equivalent dag-factory DAG."
  schedule: "{i % 60} {8 + i % 10} * * *"
  catchup: false
  max_active_runs: 1
  tags: [bench, group_{i % 7}]
  tasks:
    - task_id: extract_audience
      operator: {op}
      python_callable: bench_fns.extract
      op_kwargs: {{plan: plan_{i:04d}}}
    - task_id: load_shards
      operator: {op}
      python_callable: bench_fns.load
      dependencies: [extract_audience]
    - task_id: deliver
      operator: {op}
      python_callable: bench_fns.deliver
      partial:
        op_kwargs: {{plan: plan_{i:04d}}}
      expand:
        op_args: load_shards.output
      dependencies: [load_shards]
    - task_id: report
      operator: {op}
      python_callable: bench_fns.report
      dependencies: [deliver]
    - task_id: cleanup
      operator: {op}
      python_callable: bench_fns.cleanup
      trigger_rule: all_done
      dependencies: [deliver]
"""


def generate(base: Path, n: int) -> tuple[Path, Path]:
    """Write both DAGs folders; return (ours, theirs)."""
    ours, theirs = base / "ours", base / "dagfactory"
    (ours / "plans").mkdir(parents=True)
    theirs.mkdir()
    shutil.copy(ROOT / "dags" / "c2b_plans.py", ours)
    shutil.copy(ROOT / "dags" / "plans.yaml", ours)
    for i in range(n):
        (ours / "plans" / f"plan_{i:04d}.yaml").write_text(plan_yaml(i))
        (theirs / f"plan_{i:04d}.yml").write_text(dagfactory_yaml(i))
    (ours / "plans" / "broken_plan.yaml").write_text(BROKEN)
    (theirs / "load_yaml_dags.py").write_text(
        "from airflow.sdk import dag  # noqa: F401  (DAG-file heuristic)\n"
        "from dagfactory import load_yaml_dags\n\n"
        "load_yaml_dags(globals_dict=globals(), dags_folder=__file__.rsplit('/', 1)[0])\n")
    # Callables, imported by dotted path (cached); the name avoids Airflow's DAG-file heuristic.
    (theirs / "bench_fns.py").write_text("".join(f"def {f}(*a, **k):\n    return []\n\n\n"
                                                 for f in ("extract", "load", "deliver", "report", "cleanup")))
    return ours, theirs


# --- one layout under a real dag-processor --------------------------------------------------------

class Layout:
    """One DAGs folder with its own Airflow home (a copy of a migrated SQLite DB)."""

    def __init__(self, name: str, folder: Path, home: Path, extra: dict[str, str]) -> None:
        self.name, self.folder, self.home = name, folder, home
        # The copied airflow.cfg names the template's DB: point each layout at its own copy.
        self.env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "0",
                    # On a busy machine one file building 500 DAGs can outlast the default 50 s.
                    "AIRFLOW__DAG_PROCESSOR__DAG_FILE_PROCESSOR_TIMEOUT": "600",
                    # dag-factory's own folder (devtools.dagfactory_site) only for the dag-factory layout
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), str(folder),
                                                                extra.pop("PYTHONPATH", None)])),
                    "DO_NOT_TRACK": "1",
                    "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
                    **{k: v.replace("{home}", str(home)) for k, v in extra.items()}}
        self.samples: list[tuple[float, float]] = []  # (wall s, CPU s) per cycle

    def run(self, num_runs: int) -> tuple[float, float]:
        """Run ``dag-processor --num-runs num_runs``; return its (wall s, CPU s incl. children)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = subprocess.run([AIRFLOW, "dag-processor", "--num-runs", str(num_runs)], env=self.env,
                             capture_output=True, timeout=3600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if out.returncode:
            raise RuntimeError(f"{self.name}: dag-processor failed:\n{out.stderr.decode()[-3000:]}")
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def stored(self) -> tuple[int, list[str]]:
        """Return (active DAGs, import-error file names) as the dag-processor stored them."""
        with sqlite3.connect(self.home / "airflow.db") as db:
            dags = db.execute("SELECT count(*) FROM dag WHERE NOT is_stale").fetchone()[0]
            errors = [r[0] for r in db.execute("SELECT filename FROM import_error ORDER BY filename")]
        return dags, errors


def measure(n: int, runs: int, cycles: int, extra_layouts: dict[str, dict[str, str]]) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="c2b-bench-dp-") as tmp:
        base = Path(tmp)
        ours, theirs = generate(base, n)
        template = base / "template"
        template.mkdir()
        env0 = {**os.environ, "AIRFLOW_HOME": str(template), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        subprocess.run([AIRFLOW, "db", "migrate"], env=env0, check=True, capture_output=True, timeout=600)
        specs = {C2B: (ours, {}), **{k: (ours, v) for k, v in extra_layouts.items()}, 
                 DAG_FACTORY: (theirs, {"PYTHONPATH": str(ensure_site())})}
        layouts = []
        for i, (name, (folder, extra)) in enumerate(specs.items()):
            home = base / f"home{i}"
            shutil.copytree(template, home)
            layouts.append(Layout(name, folder, home, extra))
        for layout in layouts:  # the first run stores every DAG: not the steady state
            layout.run(1)
        for r in range(runs):
            for layout in layouts:
                one = layout.run(1)
                more = layout.run(1 + cycles)
                layout.samples.append(((more[0] - one[0]) / cycles, (more[1] - one[1]) / cycles))
                dags, errors = layout.stored()
                if layout.folder == ours:
                    assert dags == n and errors == ["plans/broken_plan.yaml"], (layout.name, dags, errors)
                else:
                    assert dags == n and errors == [], (layout.name, dags, errors)
                print(f"{n} plans, run {r + 1}/{runs}, {layout.name}: {layout.samples[-1][0]:.2f} s wall, "
                      f"{layout.samples[-1][1]:.2f} s CPU per cycle", file=sys.stderr)
        return {layout.name: {"wall": statistics.median(s[0] for s in layout.samples),
                              "cpu": statistics.median(s[1] for s in layout.samples),
                              "samples": list(layout.samples)} for layout in layouts}


# --- report ---------------------------------------------------------------------------------------

def report(results: dict[int, dict[str, dict]], runs: int, cycles: int, load: tuple[tuple[float, ...], ...],
           command: str) -> str:
    rows = []
    for n, by_layout in results.items():
        ref = by_layout[DAG_FACTORY]
        for name, r in by_layout.items():
            rows.append(f"| {n} | {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['wall'] / ref['wall']:.2f}x | "
                        f"{r['cpu'] / ref['cpu']:.2f}x |")
    headline = []
    for n, by_layout in results.items():
        ours, ref = by_layout[C2B], by_layout[DAG_FACTORY]
        verdict = "met" if ours["wall"] <= ref["wall"] else "not met"
        headline.append(f"{n} plans: {ours['wall'] / ref['wall']:.2f}x wall, {ours['cpu'] / ref['cpu']:.2f}x CPU "
                        f"(goal: no slower than dag-factory, {verdict})")
    samples = [f"{n} plans, {name}: " + ", ".join(f"{w:.2f}/{c:.2f}" for w, c in r["samples"])
               for n, by_layout in results.items() for name, r in by_layout.items()]
    loads = " / ".join(", ".join(f"{x:.2f}" for x in la) for la in load)
    return "\n".join([
        "# Parse cycles of a real `airflow dag-processor`: c2b plans vs dag-factory",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, Airflow 3.3.2, "
        f"{os.cpu_count()} cores (shared with other engineers' work; load average 1/5/15 min before / after: "
        f"{loads}). Default `parsing_processes` (2), SQLite metadata DB, `min_file_process_interval = 0`, "
        "`dag_file_processor_timeout = 600` (both layouts).",
        "",
        "One steady-state cycle = `(T[--num-runs 1+C] - T[--num-runs 1]) / C` with C = "
        f"{cycles}, DAGs already stored by an earlier run, so start-up and the first cycle cancel out; wall "
        "clock, and CPU seconds of the dag-processor plus every parse child it forked. Median of "
        f"{runs} runs, layouts interleaved. c2b parses N plans plus one broken plan, checked after every run "
        "to be the only import error in the DB (`plans/broken_plan.yaml`); every plan is fully validated "
        "(fields, cross-field rules, segment params and columns, templates in the Jinja sandbox). "
        "dag-factory validates nothing of the plan.",
        "",
        "| plans | layout | s per cycle (wall) | CPU s per cycle | wall vs dag-factory | CPU vs dag-factory |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "**" + "; ".join(headline) + ".**",
        "",
        "Samples per cycle (wall s / CPU s): " + "; ".join(samples),
        "",
    ])


def _layout_arg(text: str) -> tuple[str, dict[str, str]]:
    label, _, assignments = text.partition("=")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return label, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=3, help="extra cycles per measurement (C)")
    parser.add_argument("--layout", action="append", default=[], type=_layout_arg,
                        help="an extra c2b layout: 'label=ENV=VALUE,ENV2=VALUE2' ({home}: its Airflow home)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update bench/results")
    args = parser.parse_args()
    ensure_site()  # dag-factory in its own folder, once (devtools/dagfactory_site.py)
    load_before = os.getloadavg()
    results = {n: measure(n, args.runs, args.cycles, dict(args.layout)) for n in args.plans}
    command = "bench/parse_plans.py " + " ".join(sys.argv[1:])
    text = report(results, args.runs, args.cycles, (load_before, os.getloadavg()), command.strip())
    print(text)
    if not args.no_write:
        old = RESULTS.read_text() if RESULTS.exists() else ""
        notes = old[old.index(NOTES_MARKER):] if NOTES_MARKER in old else ""
        RESULTS.write_text(text + ("\n" + notes if notes else ""))
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
