"""Parse time of many plan files: the c2b DAG factory against astronomer dag-factory.

Generates N plan files (default 500; rotating over the five segments of the library, two touches,
three variants, exclusions, a send window: every field is validated) and N equivalent dag-factory
YAML DAGs (same five tasks, one of them mapped, PythonOperators whose callables are imported by
dotted path, dag-factory's cheapest way). Each measurement runs in a fresh Python process that
first imports Airflow and the factory under test, then times only the ``DagBag`` parse of the
folder. Modes are interleaved run by run, so load on the machine hits all of them alike; medians
are reported, with ratios against dag-factory measured in the same run.

Also measured: a worker's parse for one task (the task runner builds a ``DagBag`` of the DAG's file
only), for the plan importer (one YAML file), the fallback loader with Airflow's parsing context,
and dag-factory (which builds every DAG of its loader file).

``scripts/dev.sh run python bench/parse_plans.py [--plans 500] [--runs 5]`` prints the table and
writes ``bench/results/parse_plans.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "parse_plans.md"
COLD = "c2b plan importer, cold (empty plan cache)"
WARM = "c2b plan importer, warm (plan cache filled)"

SEGMENTS = [  # (segment, params, template attributes, channel pair)
    ("cancelled_for_reason.sql", {"reason": "price_too_low", "days": 30}, "{{ last_item }}", ("push", "sms")),
    ("high_value_cancellations.sql", {"min_price": 3000, "days": 14}, "{{ quoted_price }}", ("outbound_call", "sms")),
    ("new_users_by_channel.sql", {"channel": "douyin_ad", "days": 7}, "{{ acquisition_channel }}",
     ("private_domain", "push")),
    ("nps_detractors.sql", {"max_score": 6, "days": 30}, "{{ score }}", ("outbound_call", "push")),
    ("all_users.sql", {}, "{{ acquisition_channel }}", ("inapp", "push")),
]


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
    """Write both folders; return (ours, theirs)."""
    ours, theirs = base / "ours", base / "dagfactory"
    (ours / "plans").mkdir(parents=True)
    theirs.mkdir()
    shutil.copy(ROOT / "dags" / "c2b_plans.py", ours)
    for i in range(n):
        (ours / "plans" / f"plan_{i:04d}.yaml").write_text(plan_yaml(i))
        (theirs / f"plan_{i:04d}.yml").write_text(dagfactory_yaml(i))
    (theirs / "load_yaml_dags.py").write_text(
        "from airflow.sdk import dag  # noqa: F401  (DAG-file heuristic)\n"
        "from dagfactory import load_yaml_dags\n\n"
        "load_yaml_dags(globals_dict=globals(), dags_folder=__file__.rsplit('/', 1)[0])\n")
    # Callables, imported by dotted path (cached); the name avoids Airflow's DAG-file heuristic.
    (theirs / "bench_fns.py").write_text("".join(f"def {f}(*a, **k):\n    return []\n\n\n"
                                                 for f in ("extract", "load", "deliver", "report", "cleanup")))
    return ours, theirs


# --- the measured child process -------------------------------------------------------------------

def child(mode: str, folder: str, target: str) -> dict:
    """Import everything first, then time only the DagBag parse (what the dag-processor repeats)."""
    import airflow  # noqa: F401 - runs airflow_local_settings: installs the plan importer
    import airflow.sdk  # noqa: F401
    from airflow.dag_processing.dagbag import DagBag
    from airflow.dag_processing.importers.base import DagImporterRegistry

    if mode.startswith("dagfactory"):
        import dagfactory  # noqa: F401
    else:
        import c2b.airflow.dag_factory

        c2b.airflow.dag_factory.preload()  # the imports the dag-processor's manager does once (as dag-factory's import)
        if mode.startswith("loader"):
            DagImporterRegistry.reset()  # Airflow without the plan importer: c2b_plans.py builds the plans
        else:
            assert c2b.airflow.dag_factory.plan_importer_active()
    path = target or folder
    started = time.perf_counter()
    bag = DagBag(dag_folder=path, bundle_path=Path(folder), bundle_name="bench", safe_mode=not target)
    took = time.perf_counter() - started
    return {"seconds": took, "dags": len(bag.dags), "tasks": sum(len(d.tasks) for d in bag.dags.values()),
            "errors": len(bag.import_errors)}


def stages(folder: str) -> dict:
    """Milliseconds per plan of each stage of a cold plan parse, in-process (plan cache off)."""
    import airflow  # noqa: F401
    import airflow.sdk  # noqa: F401
    import c2b.airflow.dag_factory
    from c2b.plan.checks import repository_problems
    from c2b.plan.load import load_yaml, parse_plan

    c2b.airflow.dag_factory.preload()
    files = sorted((Path(folder) / "plans").glob("*.yaml"))
    took = dict.fromkeys(("read + YAML", "fields + cross-field", "segments + templates", "DAG build"), 0.0)
    for path in files:
        t0 = time.perf_counter()
        text = path.read_text(encoding="utf-8")
        data = load_yaml(text)
        t1 = time.perf_counter()
        plan = parse_plan(data, path, text=text)
        t2 = time.perf_counter()
        assert not repository_problems(plan)
        t3 = time.perf_counter()
        c2b.airflow.dag_factory.build_dag(plan, path)
        t4 = time.perf_counter()
        for k, a, b in zip(took, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
            took[k] += b - a
    return {k: 1000 * v / len(files) for k, v in took.items()}


def run_child(mode: str, folder: Path, target: Path | None = None, dag_id: str | None = None,
              cache: Path | None = None) -> dict:
    env = {**os.environ, "C2B_PLAN_CACHE": str(cache) if cache else "off",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(folder)]),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1", "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False",
           "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "0", "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
    env.pop("_AIRFLOW_PARSING_CONTEXT_DAG_ID", None)
    if dag_id:
        env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = dag_id
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), str(target or "")],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- orchestration --------------------------------------------------------------------------------

def measure(n: int, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="c2b-bench-") as tmp:
        ours, theirs = generate(Path(tmp), n)
        one = ours / "plans" / f"plan_{n // 2:04d}.yaml"
        # name -> (mode, folder, file parsed, parsing-context dag id, plan cache). A cold row starts
        # from an empty plan cache (every plan read and fully validated, then stored); the warm row
        # after it re-parses with the cache that run filled (the dag-processor's steady state).
        modes = {
            COLD: ("importer", ours, None, None, "importer"),
            WARM: ("importer", ours, None, None, "importer"),
            "c2b fallback loader, cold": ("loader", ours, None, None, "loader"),
            "c2b fallback loader, warm": ("loader", ours, None, None, "loader"),
            "dag-factory 1.1.0": ("dagfactory", theirs, None, None, None),
            "worker: c2b plan importer, cold": ("importer-one", ours, one, None, "worker"),
            "worker: c2b plan importer, warm": ("importer-one", ours, one, None, "worker"),
            "worker: c2b fallback loader, cold": ("loader-one", ours, ours / "c2b_plans.py", one.stem, "worker-loader"),
            "worker: dag-factory": ("dagfactory-one", theirs, theirs / "load_yaml_dags.py", one.stem, None),
        }
        samples: dict[str, list[dict]] = {k: [] for k in modes}
        for r in range(runs):
            caches = {}
            for name, (mode, folder, target, dag_id, cache) in modes.items():
                if cache and ", cold" in name:
                    caches[cache] = Path(tmp) / f"cache-{r}-{cache}"  # empty: created by the run
                    assert not caches[cache].exists()
                assert not cache or cache in caches, f"{name}: a warm row needs its cold row first"
                samples[name].append(run_child(mode, folder, target, dag_id, caches.get(cache)))
                if cache and ", cold" in name:  # the cold run must have filled the cache the warm row reads
                    filled = len(list(caches[cache].glob("*.pickle")))
                    assert filled == samples[name][-1]["dags"], f"{name}: {filled} plans cached"
            print(f"run {r + 1}/{runs}: " + ", ".join(f"{k} {v[-1]['seconds']:.3f}s" for k, v in samples.items()),
                  file=sys.stderr)
        stage_ms = run_child("stages", ours)
    out = {name: {"median": statistics.median(s["seconds"] for s in v), "all": [s["seconds"] for s in v],
                  "dags": v[0]["dags"], "tasks": v[0]["tasks"], "errors": v[0]["errors"]}
           for name, v in samples.items()}
    return out | {"_stages": stage_ms}


# --- a real dag-processor ------------------------------------------------------------------------

def _python_dags(folder: Path, n: int) -> Path:
    """N plain Python DAG files of five tasks: Airflow's own one-DAG-per-file cost, for reference."""
    folder.mkdir()
    for i in range(n):
        (folder / f"dag_{i:04d}.py").write_text(
            "from datetime import datetime\n"
            "from airflow.sdk import DAG\n"
            "from airflow.providers.standard.operators.empty import EmptyOperator\n\n"
            f"with DAG('py_{i:04d}', schedule='@daily', start_date=datetime(2026, 1, 1), catchup=False):\n"
            "    a, b, c, d, e = (EmptyOperator(task_id=t) for t in 'abcde')\n"
            "    a >> b >> c >> [d, e]\n")
    return folder


def dag_processor_cycles(n: int, runs: int) -> dict[str, float]:
    """Seconds of one steady-state parse cycle of ``airflow dag-processor`` per layout, minus start-up.

    Each layout gets its own Airflow home (a copy of one migrated SQLite DB); a first cycle stores
    the DAGs, then ``dag-processor --num-runs 1`` is timed ``runs`` times (median).
    """
    airflow = str(Path(sys.executable).parent / "airflow")
    with tempfile.TemporaryDirectory(prefix="c2b-bench-dp-") as tmp:
        base = Path(tmp)
        ours, theirs = generate(base, n)
        layouts = {"empty folder (start-up)": ((base / "empty"), {}),
                   "c2b plan importer, plan cache off (every plan validated)": (ours, {"C2B_PLAN_CACHE": "off"}),
                   "c2b plan importer (plan cache, steady state)": (ours, {}),
                   "c2b fallback loader (C2B_PLAN_IMPORTER=off, plan cache)": (ours, {"C2B_PLAN_IMPORTER": "off"}),
                   "dag-factory 1.1.0": (theirs, {}),
                   f"{n} plain Python DAG files": (_python_dags(base / "python", n), {})}
        (base / "empty").mkdir()
        template = base / "template"
        template.mkdir()
        env0 = {**os.environ, "AIRFLOW_HOME": str(template), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        subprocess.run([airflow, "db", "migrate"], env=env0, check=True, capture_output=True, timeout=600)
        out: dict[str, float] = {}
        for i, (name, (folder, extra)) in enumerate(layouts.items()):
            home = base / f"home{i}"
            shutil.copytree(template, home)
            env = {**os.environ, "C2B_PLAN_CACHE": str(home / "c2b" / "plan_cache"), **extra,
                   "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(folder),
                   "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(folder)]), "DO_NOT_TRACK": "1",
                   "AIRFLOW__DAG_FACTORY__ENABLE_TELEMETRY": "False"}
            times = []
            for r in range(runs + 1):
                started = time.perf_counter()
                subprocess.run([airflow, "dag-processor", "--num-runs", "1"], env=env, check=True,
                               capture_output=True, timeout=1800)
                if r:  # the first cycle stores every DAG: not the steady state
                    times.append(time.perf_counter() - started)
            out[name] = statistics.median(times)
            print(f"dag-processor {name}: {out[name]:.1f}s", file=sys.stderr)
    startup = out.pop("empty folder (start-up)")
    return {k: v - startup for k, v in out.items()} | {"start-up": startup}


def report(results: dict, n: int, runs: int, cycles: dict[str, float] | None = None, cycle_n: int = 0,
           load: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())) -> str:
    results = dict(results)
    stage_ms = results.pop("_stages")
    base = results["dag-factory 1.1.0"]["median"]
    wbase = results["worker: dag-factory"]["median"]
    rows = []
    for name, r in results.items():
        ref = wbase if name.startswith("worker") else base
        rows.append(f"| {name} | {r['dags']} | {r['tasks']} | {r['errors']} | {r['median']:.3f} | "
                    f"{1000 * r['median'] / max(r['dags'], 1):.2f} | {r['median'] / ref:.2f}x |")
    cold, warm = results[COLD]["median"] / base, results[WARM]["median"] / base
    per_run = {k: [x / y for x, y in zip(results[k]["all"], results["dag-factory 1.1.0"]["all"], strict=True)]
               for k in (COLD, WARM)}
    cold_ms = 1000 * results[COLD]["median"] / max(results[COLD]["dags"], 1)
    loads = " / ".join(", ".join(f"{x:.2f}" for x in la) for la in load if la)
    return "\n".join([
        "# Parse time: c2b plan files vs dag-factory",
        "",
        f"`bench/parse_plans.py --plans {n} --runs {runs}`, {time.strftime('%Y-%m-%d')}, Python "
        f"{platform.python_version()}, Airflow 3.3.2, {os.cpu_count()} cores. Each figure is the median of {runs} "
        "runs, each in a fresh process that has already imported Airflow and the factory, timing only the "
        "`DagBag` parse; modes interleaved. The machine was shared with other engineers' work during the run "
        "(ratios are measured in the same run, so load affects both sides)"
        + (f"; load average (1, 5, 15 min) before / after: {loads}." if loads else "."),
        "",
        "Every c2b plan is fully validated at parse (fields, cross-field rules, its segment file's params and "
        "columns, both templates checked against the Jinja sandbox) and built into a 5-task DAG (one task "
        "mapped). dag-factory builds the same 5 tasks from equivalent YAML and validates nothing of the plan.",
        "",
        "**Cold** rows start with an empty plan cache: every plan file is read, fully validated, built and "
        "then stored in the cache. **Warm** rows re-parse the same unchanged files with the cache that run "
        "filled, which is what the dag-processor does every 30 s and a worker before each task: an unchanged "
        "plan's YAML and validation are skipped (its segment files are still hashed and compared), its DAG "
        "is still built. A broken plan is never cached (validated on every parse).",
        "",
        "| mode | DAGs | tasks | import errors | median s | ms per DAG | vs dag-factory |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"**c2b plan importer / dag-factory: cold {cold:.2f}x, warm {warm:.2f}x** (target <= 0.35x with full "
        f"validation, i.e. cold: {'met' if cold <= 0.35 else 'not met'}; warm: "
        f"{'met' if warm <= 0.35 else 'not met'}). Per run (same run's dag-factory): cold "
        f"{', '.join(f'{x:.2f}' for x in per_run[COLD])}; warm {', '.join(f'{x:.2f}' for x in per_run[WARM])}. "
        "Worker rows compare the parse a task runner does before running one task: the importer parses one "
        "YAML file, the fallback loader builds one plan thanks to Airflow's parsing context and `<id>.yaml` "
        "file names, dag-factory builds every DAG of its loader file (ratios against that row).",
        "",
        f"Where a cold plan's time goes (ms per plan, the same {n} plans timed stage by stage in one process): "
        + ", ".join(f"{k} {v:.2f}" for k, v in stage_ms.items())
        + f"; the rest of the cold importer's {cold_ms:.2f} ms per plan ({cold_ms - sum(stage_ms.values()):.2f}) "
        "is `DagBag`'s own per-file work (its checks of each DAG, the cron timetable's validation, task "
        "policies) and the garbage collector, whose collections scan everything Airflow imported (in the "
        "real dag-processor Airflow's `gc.freeze()` spares the forked per-file children most of that). "
        "Cut so far: trigger params attached after the tasks, one thin `PlanStep` operator, the "
        "dag-processor's manager pre-importing what a plan parse needs, templates of the common shape "
        "checked without Jinja's parser (any other template, or any problem, goes through Jinja), plain "
        "YAML built from libyaml's nodes in one loop, and the config-derived DAG arguments read once per "
        "process.",
        "",
        "All samples (s): " + "; ".join(f"{k}: {', '.join(f'{x:.3f}' for x in r['all'])}" for k, r in results.items()),
        "",
        *(_cycles_section(cycles, cycle_n) if cycles else []),
    ])


def _cycles_section(cycles: dict[str, float], n: int) -> list[str]:
    startup = cycles.pop("start-up")
    ref = cycles["dag-factory 1.1.0"]
    return [
        f"## One parse cycle of a real `airflow dag-processor`, {n} plans",
        "",
        "What the `DagBag` figures leave out: the dag-processor forks one child per file, and each child "
        "costs more than parsing a small DAG. Steady-state cycle (DAGs already stored, and the plan cache "
        "filled by the first, untimed cycle, except in the cache-off row), "
        f"`dag-processor --num-runs 1`, start-up ({startup:.1f} s, an empty folder) subtracted, default "
        "`parsing_processes` (2):",
        "",
        "| layout | parse units | s per cycle | vs dag-factory |",
        "|---|---|---|---|",
        *(f"| {k} | {1 if 'loader' in k or 'factory' in k else n} | {v:.1f} | {v / ref:.2f}x |"
          for k, v in cycles.items()),
        "",
        "The plan importer costs what Airflow's usual one-DAG-per-file layout costs (the plain Python row); "
        "that is the price of one import error per broken plan, of a worker parsing one small file, and of a "
        "crash in one plan staying in that plan. `C2B_PLAN_IMPORTER=off` trades those for one parse unit.",
        "",
    ]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(stages(sys.argv[3]) if sys.argv[2] == "stages" else child(*sys.argv[2:5])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dag-processor", type=int, default=100, metavar="N",
                        help="also time real dag-processor cycles with N plans (0: skip)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update bench/results")
    args = parser.parse_args()
    try:
        import dagfactory  # noqa: F401
    except ImportError:
        sys.exit("dag-factory is not installed: pip install -r requirements.txt (it pins dag-factory==1.1.0)")
    load_before = os.getloadavg()
    results = measure(args.plans, args.runs)
    load_after = os.getloadavg()
    cycles = dag_processor_cycles(args.dag_processor, 2) if args.dag_processor else None
    text = report(results, args.plans, args.runs, cycles, args.dag_processor, (load_before, load_after))
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
