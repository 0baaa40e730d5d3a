"""The DAG factory: every plan file ``dags/plans/<id>.yaml`` becomes one Airflow DAG.

How Airflow finds plans (see docs/plans.md):

- **The plan importer** (the normal path). :class:`PlanImporter` is an Airflow DAG importer for
  ``.yaml`` files, registered in every Airflow process by ``plugins/airflow_local_settings.py``
  (:func:`install_plan_importer`). The dag-processor parses one file for all plans, the plan index
  ``dags/plans.yaml`` beside ``dags/plans/``, so a cycle costs one parse unit however many plans
  there are; a broken plan is still its own import error, keyed by its YAML path and carrying the
  line of the first problem, while every other plan loads, and it is cleared at the next parse once
  fixed; a worker re-parses the index and builds only its task's plan; the UI's Code tab shows the
  plan's YAML. Airflow 3.3.2 has the importer registry but its dag-processor still lists only
  ``.py`` and zip files, so the install also extends that listing with the importer's files.
- **The fallback loader** ``dags/c2b_plans.py``, used only where the importer is not installed: it
  builds every valid plan (just the requested one when a worker parses for a task, via
  ``get_parsing_context``, which relies on the file being named ``<id>.yaml``) and can only report
  broken plans as warnings, because Airflow records import errors per ``.py`` file.

At parse time the factory only reads and validates YAML and segment headers; warehouse, Redis and
channels are touched inside tasks. Every task is a ``PlanStep`` operator (cheaper to build than
``@task`` functions, which matters because every parse builds every plan's DAG): :func:`run_step`
resolves Airflow context and connections and calls :mod:`c2b.steps`. Graph of a plan DAG::

    extract_audience >> load_shards >> deliver[shard 1..N] >> report
                                                            >> cleanup (all_done)

``report`` and ``cleanup`` are both leaves, so a failed shard fails the run even though cleanup
always runs.
"""

from __future__ import annotations

import logging
import os
import reprlib
import sys
import traceback
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from c2b.plan.errors import PlanError
    from c2b.plan.model import Plan

PLANS_DIRNAME = "plans"
PLAN_SUFFIX = ".yaml"
# The one parse unit of a plans folder: dags/plans.yaml builds every dags/plans/*.yaml.
PLAN_INDEX = PLANS_DIRNAME + PLAN_SUFFIX


# --- one plan -> one DAG --------------------------------------------------------------------------

# The DAG's doc is stored with every serialized DAG and shown by the UI: keep it small whatever a
# plan holds (segment params are untyped values, any size).
MAX_DOC_CHARS = 20_000
_PARAMS_REPR = reprlib.Repr()
_PARAMS_REPR.maxlevel, _PARAMS_REPR.maxdict, _PARAMS_REPR.maxlist = 3, 20, 20
_PARAMS_REPR.maxstring = _PARAMS_REPR.maxother = 200


def _doc_md(plan: Plan, path: Path) -> str:
    """Return the DAG's doc: the plan in words, cheap to build (no YAML dump), at most MAX_DOC_CHARS."""
    from c2b.delivery.controls.frequency_cap import rules_of

    aud = plan.audience
    who = "everyone (`all_users.sql`)" if aud.all else f"`{aud.segment}` with `{_PARAMS_REPR.repr(dict(aud.params))}`"
    about = plan.description.strip()
    about = about if len(about) <= MAX_DOC_CHARS // 4 else about[:MAX_DOC_CHARS // 4] + " ..."
    lines = [f"## {plan.id}", "", about, "", f"**Audience:** {who}"]
    for item in aud.exclude:
        lines.append(f"- excluding `{item.label}`")
    if aud.limit:
        lines.append(f"- at most {aud.limit:,} users")
    w = plan.window
    lines += ["", f"**Schedule:** `{_schedule_text(plan)}`, window {w.start or plan.start_date} .. "
                  f"{w.end or 'open'}, send hours {w.send_hours or 'any'} ({w.timezone} unless the user's own)"]
    weights = plan.variant_weights
    total = sum(weights.values())
    lines += ["", "| variant | share | touches |", "|---|---|---|"]
    for name, weight in weights.items():
        touches = ", ".join(t.name for t in plan.touches_of(name)) or "(holdout)"
        lines.append(f"| {name} | {100 * weight / total:.0f}% | {touches} |")
    lines += ["", "**Touches:**"]
    for t in plan.touches:
        conn = f" (connection `{t.connection}`)" if t.connection else ""
        offer = f", offer {t.offer.type}" + (f" {t.offer.amount:g} {t.offer.currency}" if t.offer.amount else "") \
            if t.offer else ""
        lines.append(f"- **{t.name}** via `{t.channel}`{conn}{offer}")
    d = plan.delivery
    lines += ["", f"**Delivery:** {d.shards} shards, page size {d.page_size}, concurrency {d.concurrency}, "
                  f"rate limit {d.rate_limit or 'none'}/s, frequency cap {rules_of(plan).describe()}",
              "", f"_Plan file:_ `{path.name}`"]
    doc = "\n".join(lines)
    if len(doc) > MAX_DOC_CHARS:
        doc = doc[:MAX_DOC_CHARS] + f"\n\n_(cut at {MAX_DOC_CHARS:,} characters; the plan file has the rest)_"
    return doc


def _schedule_text(plan: Plan) -> str:
    s = plan.schedule
    return "manual" if s is None else s if isinstance(s, str) else f"on asset {s.asset}"


def build_dag(plan: Plan, path: Path) -> Any:
    """Return the Airflow DAG of one validated plan."""
    import pendulum
    from airflow.sdk import DAG, Asset, Param, TriggerRule

    from c2b.plan.lines import dag_settings, line_of

    step: Any = _plan_step_class()
    d = plan.delivery
    line = dag_settings(line_of(path))
    default_args = {
        "owner": line.get("owner", plan.owner),
        "retries": d.retries,
        "retry_delay": timedelta(seconds=d.retry_delay_seconds),
        "retry_exponential_backoff": d.retry_backoff,
        **({"pool": line["pool"]} if line.get("pool") else {}),
    }
    tz = plan.window.timezone
    first, last = plan.first_day, plan.window.end
    schedule: Any = plan.schedule if plan.schedule is None or isinstance(plan.schedule, str) \
        else [Asset(uri=plan.schedule.asset)]
    with DAG(
        dag_id=plan.id,
        description=(plan.description.strip().splitlines() or [""])[0][:200],
        doc_md=_doc_md(plan, path),
        schedule=schedule,
        start_date=pendulum.datetime(first.year, first.month, first.day, tz=tz),
        end_date=pendulum.datetime(last.year, last.month, last.day, 23, 59, 59, tz=tz) if last else None,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"c2b", *plan.tags, *line.get("tags", ())}),
        default_args=default_args,
        **_dag_config_defaults(),
    ) as dag:
        extract = step(task_id="extract_audience", step="extract_audience")
        shards = step(task_id="load_shards", step="load_shards", inputs={"extract": extract.output})
        deliver = step.partial(task_id="deliver", step="deliver", map_index_template="{{ shard_label }}") \
            .expand(shard=shards.output)
        step(task_id="report", step="report", trigger_rule=TriggerRule.NONE_FAILED,
             inputs={"extract": extract.output, "shards": shards.output, "stats": deliver.output},
             outlets=[Asset(uri=report_asset_uri(plan.id))])
        deliver >> step(task_id="cleanup", step="cleanup", trigger_rule=TriggerRule.ALL_DONE)
    # Trigger params go on the DAG after its tasks: a task created while the DAG has params gets a
    # deep copy of them per class of its MRO, and tasks need none: a run's params are the DAG's
    # params merged with the trigger's conf.
    dag.params.update({
        "dry_run": Param(False, type="boolean",
                         description="Extract, assign, shard and report, but send nothing."),
        "sample": Param(None, type=["null", "integer"], minimum=1,
                        description="Only the first N users of the segment (a capped trial)."),
        "only_touches": Param([], type="array", items={"type": "string", "enum": [t.name for t in plan.touches]},
                              description="Send only these touches (empty: all)."),
    })
    dag.fileloc = str(path)
    dag._c2b_plan = plan  # type: ignore[attr-defined]  # what the steps run with (see plan_of)
    return dag


@lru_cache(maxsize=1)
def _dag_config_defaults() -> dict[str, Any]:
    """Return the DAG arguments Airflow would read from its config for every DAG, read once.

    The same values a ``DAG()`` without them gets (config does not change within a process);
    reading them per DAG is a measurable part of building hundreds of plans.
    """
    from airflow.sdk.configuration import conf

    return {"max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
            "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
            "disable_bundle_versioning": conf.getboolean("dag_processor", "disable_bundle_versioning")}


def plan_of(dag: Any) -> Plan:
    """Return the plan a DAG was built from (re-read from its file if the DAG lost it)."""
    plan = getattr(dag, "_c2b_plan", None)
    if plan is not None:
        return plan
    from c2b.plan.lines import with_line
    from c2b.plan.load import load_plan

    fileloc = Path(dag.fileloc)
    if fileloc.suffix != PLAN_SUFFIX:  # built by dags/c2b_plans.py
        fileloc = find_plan_file(fileloc.parent / PLANS_DIRNAME, dag.dag_id)
    return with_line(load_plan(fileloc), fileloc)


def report_asset_uri(plan_id: str) -> str:
    """Return the URI of the Asset a plan's ``report`` task updates when a run's report is written."""
    return f"c2b://plans/{plan_id}/report"


def results_asset_uri(plan_id: str) -> str:
    """Return the URI of the Asset updated when a plan's attribution (its results) is updated."""
    return f"c2b://plans/{plan_id}/results"


def report_event_extra(summary: dict[str, Any]) -> dict[str, Any]:
    """Return the report Asset event's extra: the run, its status and its counts (small, JSON-able)."""
    outcomes: dict[str, int] = {}
    for key, n in summary["outcomes"].items():
        outcome = key.rsplit("|", 1)[-1]
        outcomes[outcome] = outcomes.get(outcome, 0) + int(n)
    return {"run_id": summary["run"], "status": summary["status"], "audience": dict(summary["audience"]),
            "outcomes": dict(sorted(outcomes.items())), "per_touch": summary["per_touch"]}


def run_step(step: str, plan: Plan, context: Any, inputs: dict[str, Any], shard: int | list[int] | None) -> Any:
    """Run one step of a plan run: resolve Airflow resources, then call :mod:`c2b.steps`."""
    from c2b import steps
    from c2b.airflow import resources

    run_id = context["run_id"]
    if step == "extract_audience":
        from c2b.plan.lines import line_of
        from c2b.results.audit import audit_record

        # Redis always: exclusions and the plan's re-entry rule read the contact history there.
        path = Path(context["dag"].fileloc)
        if path.suffix != PLAN_SUFFIX:  # built by dags/c2b_plans.py: the plan file is under plans/
            path = find_plan_file(path.parent / PLANS_DIRNAME, plan.id)
        line = line_of(path)
        dag_run = context.get("dag_run")
        audit = audit_record(plan, path,
                             trigger=str(getattr(getattr(dag_run, "run_type", None), "value", "") or "") or None,
                             user=getattr(dag_run, "triggering_user_name", None),
                             params=dict(context["params"]), line=line.name if line else None)
        from airflow.sdk.exceptions import AirflowFailException

        from c2b.delivery.history_archive import HistoryArchiveError

        try:
            return steps.step_extract(plan, run_id, resources.get_warehouse(), context["params"].get("sample"),
                                      redis=resources.get_redis(), holdout=line.holdout if line else None,
                                      audit=audit)
        except HistoryArchiveError as exc:  # a damaged history stays damaged: the message says what to do
            raise AirflowFailException(f"plan {plan.id}: {exc}") from exc
    if step == "load_shards":
        from airflow.sdk.exceptions import AirflowFailException

        from c2b.delivery.ledger_archive import LedgerArchiveError
        from c2b.storage import StorageMissing
        from c2b.store.sizing import ShardCountError

        try:
            return steps.step_load(plan, run_id, resources.get_redis(), inputs["extract"])
        except ShardCountError as exc:  # a plan error: every retry would fail the same way
            raise AirflowFailException(f"plan {plan.id}: {exc}") from exc
        except LedgerArchiveError as exc:  # a damaged archive stays damaged: the message says what to do
            raise AirflowFailException(f"plan {plan.id}: {exc}") from exc
        except StorageMissing as exc:  # retrying the load cannot bring the staging file back
            raise AirflowFailException(
                f"{exc}. The staging file is written by extract_audience and deleted by cleanup: "
                "Clear the whole run to extract again") from exc
    if step == "deliver":
        assert shard is not None, "deliver is mapped over the shards load_shards returns"
        context["shard_label"] = steps.unit_label(shard)  # the map_index_template: "shard 7", "shards 1-8"
        if isinstance(shard, int):
            return resources.deliver_shard(plan, run_id, shard, dict(context["params"]))
        return resources.deliver_shards(plan, run_id, steps.unit_shards(shard), dict(context["params"]))
    if step == "report":
        # One slice reads every mapped deliver's stats in one request; iterating the lazy sequence
        # instead reads them one by one until a 404, which the task SDK logs as "XCom not found".
        stats = inputs["stats"]
        # A task of several shards returns a list of their stats (delivery.shards_per_task).
        shard_stats = [st for x in (list(stats[:]) if stats else []) for st in (x if isinstance(x, list) else [x])]
        summary = steps.step_report(plan, run_id, inputs["extract"], steps.all_shards(inputs["shards"]), shard_stats,
                                     redis=resources.get_redis(), results_store=resources.get_results_store())
        from airflow.sdk import Asset

        context["outlet_events"][Asset(uri=report_asset_uri(plan.id))].extra = report_event_extra(summary)
        return summary
    if step == "cleanup":
        return steps.step_cleanup(plan, run_id, resources.get_redis())
    raise ValueError(f"unknown plan step {step!r}")


@lru_cache(maxsize=1)
def _plan_step_class() -> type:
    """Define the ``PlanStep`` operator on first use (keeps Airflow out of this module's import)."""
    from airflow.sdk import BaseOperator

    class PlanStep(BaseOperator):
        """One step of a plan run; its inputs are earlier steps' XComs, resolved when it runs.

        A thin operator rather than ``@task`` functions: every parse builds every plan's DAG, and
        this builds in about half the time. The plan itself is not an argument (arguments are
        serialized into the DAG); the step finds it on the parsed DAG (:func:`plan_of`).
        """

        template_fields = ("inputs", "shard")
        ui_color = "#e3eefc"

        def __init__(self, *, step: str, inputs: dict[str, Any] | None = None, shard: int | list[int] | None = None,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.step = step
            self.inputs = inputs or {}
            self.shard = shard

        def execute(self, context: Any) -> Any:
            try:
                return run_step(self.step, plan_of(self.dag), context, self.inputs, self.shard)
            finally:
                from c2b.process_memory import memory_mib

                now, peak = memory_mib()
                logging.getLogger(__name__).info("%s: task process memory %s MiB, peak %s MiB", self.step, now, peak)

    PlanStep.__module__ = __name__
    return PlanStep


def load_plan_dags(path: Path, only_dag_id: str | None = None) -> list[Any]:
    """Validate the plan file at ``path`` and return its DAGs: the plan's, then its results DAG
    (``<plan>__results``, when the plan has a ``goal``); every failure is a ``PlanError``.

    Both come from one validation of the file, in the same parse unit (the plan index), so a goal
    costs the dag-processor one more DAG, not a second pass over every plan. ``only_dag_id`` (a
    worker's parsing context) keeps just that one of the two.
    """
    from c2b.airflow.results_dag import build_results_dag, results_dag_id
    from c2b.plan.errors import PlanError

    dag = load_plan_dag(path)
    plan = plan_of(dag)
    mine = [] if only_dag_id not in (None, dag.dag_id) else [dag]
    if plan.goal is None or only_dag_id not in (None, results_dag_id(plan.id)):
        return mine
    try:
        return [*mine, build_results_dag(plan, path)]
    except Exception as exc:  # noqa: BLE001 - as for the plan's own DAG: this file's error only
        raise PlanError(path, [("goal", f"Airflow rejected the results DAG built from this plan: "
                                        f"{type(exc).__name__}: {exc}")]) from exc


def load_plan_dag(path: Path) -> Any:
    """Validate the plan file at ``path`` and return its DAG; every failure is a ``PlanError``."""
    from c2b.plan.errors import PlanError
    from c2b.plan.lines import with_line
    from c2b.plan.load import load_plan

    plan = with_line(load_plan(path, check_name=True), path)
    try:
        dag = build_dag(plan, path)
    except Exception as exc:  # noqa: BLE001 - a valid plan Airflow still rejects: say so, per file
        raise PlanError(path, [("", f"Airflow rejected the DAG built from this plan: {type(exc).__name__}: {exc}")]) \
            from exc
    return dag


# --- many plans (the fallback loader, the demo and tests) ----------------------------------------

def plan_files(folder: Path) -> list[Path]:
    """Return the plan files of a ``plans/`` folder and of its business-line folders, sorted."""
    from c2b.plan.lines import LINE_FILE

    found = [*folder.glob(f"*{PLAN_SUFFIX}"), *folder.glob(f"*/*{PLAN_SUFFIX}")]
    return sorted(p for p in found if not p.name.startswith(".") and not p.parent.name.startswith(".")
                  and p.name != LINE_FILE)


def find_plan_file(folder: Path, plan_id: str) -> Path:
    """Return the file of plan ``plan_id`` in ``folder`` or one of its line folders (or where it
    would be, directly in ``folder``, when there is none)."""
    found = [p for p in plan_files(folder) if p.stem == plan_id]
    return found[0] if found else folder / f"{plan_id}{PLAN_SUFFIX}"


def build_dags(folder: Path, only_dag_id: str | None = None) -> tuple[dict[str, Any], list[PlanError]]:
    """Build the DAG of every valid plan in ``folder``; return DAGs by id and the plan errors.

    ``only_dag_id`` (from Airflow's parsing context on a worker) builds just that plan's DAG.
    Plan files are named ``<id>.yaml``, which is what makes that shortcut possible.
    """
    from c2b.plan.errors import PlanError

    files = plan_files(folder)
    if only_dag_id:
        files = [p for p in files if builds(p, only_dag_id)]
    dags: dict[str, Any] = {}
    errors: list[PlanError] = []
    for path in files:
        try:
            for dag in load_plan_dags(path, only_dag_id):
                dags[dag.dag_id] = dag
        except PlanError as exc:
            errors.append(exc)
    return dags, errors


def builds(path: Path, dag_id: str) -> bool:
    """Return whether plan file ``path`` builds DAG ``dag_id``: its plan's, or its results DAG."""
    from c2b.airflow.results_dag import results_dag_id

    return dag_id in (path.stem, results_dag_id(path.stem))


def fallback_dags(folder: Path, only_dag_id: str | None = None) -> dict[str, Any]:
    """Return the DAGs ``dags/c2b_plans.py`` exports: none when the plan importer is installed.

    With the importer the plan index builds every plan, so exporting the same DAGs from the
    loader too would make every plan a duplicate DAG id. A worker parsing this file for a task
    (``only_dag_id`` set) always builds that plan: the DAG was built here by a dag-processor
    running without the importer, whatever this process has installed.
    """
    import warnings

    if not only_dag_id and plan_importer_active():
        return {}
    dags, errors = build_dags(folder, only_dag_id)
    for err in errors:
        # warn_explicit without a registry: never deduplicated, and it points at the YAML line.
        warnings.warn_explicit(f"{err} [the c2b plan importer is not installed, so a broken plan is only a "
                               "warning; see docs/plans.md]", UserWarning,
                               str(folder / Path(err.path).name), err.line or 0)
    return dags


# --- the plan importer ----------------------------------------------------------------------------

def is_plan_file(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a plan file: ``<id>.yaml`` in a ``plans/`` folder or in one of
    its business-line folders ``plans/<line>/`` (whose ``line.yaml`` is not a plan)."""
    p = Path(path)
    if p.suffix != PLAN_SUFFIX or p.name.startswith(".") or p.name == "line.yaml":
        return False
    return p.parent.name == PLANS_DIRNAME or (p.parent.parent.name == PLANS_DIRNAME
                                               and not p.parent.name.startswith("."))


def is_plan_index(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a plan index: ``plans.yaml`` beside a ``plans/`` folder."""
    p = Path(path)
    return p.name == PLAN_INDEX and p.with_suffix("").is_dir()


def index_of(plan_file: str | os.PathLike[str]) -> Path:
    """Return the index file whose parse builds ``plan_file`` (``dags/plans/x.yaml`` and a line's
    ``dags/plans/<line>/x.yaml`` -> ``dags/plans.yaml``)."""
    folder = Path(plan_file).parent
    if folder.name != PLANS_DIRNAME:  # a business line's folder inside plans/
        folder = folder.parent
    return folder.with_suffix(PLAN_SUFFIX)


class PlanListingError(RuntimeError):
    """Plan files exist that the dag-processor would never parse: refuse to start without them."""


def check_listing(directory: str | os.PathLike[str], listed: list[str]) -> None:
    """Raise :class:`PlanListingError` when a plan file under ``directory`` has no index in ``listed``.

    ``listed`` is what the dag-processor is about to parse. Without this, an Airflow that stopped
    listing the index (or a plans folder without its index) would drop every plan silently.
    """
    listed_set = {os.path.abspath(p) for p in listed}
    missing: dict[Path, int] = {}
    for path in plan_importer().find_yaml(directory):
        if (is_plan_file(path) and os.path.abspath(index_of(path)) not in listed_set
                and os.path.abspath(path) not in listed_set):
            missing[index_of(path)] = missing.get(index_of(path), 0) + 1
    if missing:
        lines = [f"{n} plan file(s) in {index.with_suffix('')}/ but the dag-processor lists neither them nor "
                 f"{index}" for index, n in sorted(missing.items())]
        raise PlanListingError("c2b: " + "; ".join(lines) + ". This Airflow lists DAG files in a way the c2b "
                               "plan importer does not reach: set C2B_PLAN_IMPORTER=off to load plans through "
                               "dags/c2b_plans.py (see docs/plans.md).")
    unindexed = sorted({str(index_of(p).with_suffix("")) for p in listed if is_plan_file(p)})
    if unindexed:
        import logging

        logging.getLogger(__name__).warning(
            "c2b: %s has no plan index (%s beside it): each plan file is its own parse unit, which costs a "
            "forked process per plan per cycle; add the index (an empty file, as dags/%s)",
            ", ".join(unindexed), PLAN_INDEX, PLAN_INDEX)


@lru_cache(maxsize=1)
def _importer_class() -> type:
    """Define :class:`PlanImporter` on first use (keeps Airflow out of this module's import)."""
    from airflow.dag_processing.importers import AbstractDagImporter, DagImportError, DagImportResult

    class PlanImporter(AbstractDagImporter):
        """Airflow DAG importer for plans: the index ``plans.yaml`` builds every ``plans/*.yaml``.

        One parse unit for all plans (the dag-processor forks a child per unit, which costs more
        than building a plan), yet one import error per broken plan file: each error carries its
        plan file's path and line, and Airflow records import errors by that path. The DAGs name
        the index as their ``relative_fileloc`` (what the dag-processor tracks and a worker
        re-parses; with Airflow's parsing context a worker builds just its own plan) and the plan
        file as their ``fileloc`` (the UI's Code tab shows the YAML). A plan file given on its own
        (``DagBag`` of one file) is imported alone.
        """

        @classmethod
        def supported_extensions(cls) -> list[str]:
            return [PLAN_SUFFIX]

        def find_yaml(self, directory: str | os.PathLike[str]) -> Iterator[str]:
            """Yield every ``.yaml`` file under ``directory`` that ``.airflowignore`` does not exclude."""
            # safe_mode=False: the "contains airflow and dag" heuristic is for Python files.
            yield from super().list_dag_files(directory, safe_mode=False)

        def list_dag_files(self, directory: str | os.PathLike[str], safe_mode: bool = True) -> Iterator[str]:
            # The index, not its plan files (each listed file is a parse unit of its own). A plans
            # folder without an index still loads, one parse unit per plan file: slower, never lost.
            files = list(self.find_yaml(directory))
            indexed = {str(Path(p).with_suffix("")) for p in files if is_plan_index(p)}
            for p in files:
                if is_plan_index(p) or (is_plan_file(p) and str(index_of(p).with_suffix("")) not in indexed):
                    yield p

        def import_file(self, file_path: str | Path, *, bundle_path: Path | None = None,
                        bundle_name: str | None = None, safe_mode: bool = True) -> Any:
            result = DagImportResult(file_path=self.get_relative_path(file_path, bundle_path))
            if is_plan_file(file_path):
                self._import_plan(Path(file_path), bundle_path, result, None)
                return result
            from airflow.sdk import get_parsing_context

            only = get_parsing_context().dag_id  # a worker parsing for one task builds only its plan
            index_rel = result.file_path
            for plan_path in plan_files(Path(file_path).with_suffix("")):
                if only is None or builds(plan_path, only):
                    self._import_plan(plan_path, bundle_path, result, index_rel, only)
            return result

        def _import_plan(self, path: Path, bundle_path: Path | None, result: Any, index_rel: str | None,
                         only: str | None = None) -> None:
            """Add the DAGs of one plan file to ``result``, or its import error under the plan's own path."""
            from c2b.plan.errors import PlanError

            rel = self.get_relative_path(path, bundle_path)
            try:
                dags = load_plan_dags(path, only)
            except PlanError as exc:
                exc = PlanError(rel, exc.problems)  # name the file as the UI does: bundle-relative
                result.errors.append(DagImportError(
                    file_path=rel, message=str(exc), error_type="plan", line_number=exc.line,
                    suggestion="fix the fields named above; `c2b validate` shows the same errors"))
                return
            except Exception as exc:  # noqa: BLE001 - a bug of ours must still be this plan's error only
                result.errors.append(DagImportError(file_path=rel, message=f"{type(exc).__name__}: {exc}",
                                                    stacktrace=traceback.format_exc()))
                return
            for dag in dags:  # the plan's DAG and, with a goal, its results DAG
                dag.fileloc = str(path)
                dag.relative_fileloc = index_rel or rel
                result.dags.append(dag)

    return PlanImporter


@lru_cache(maxsize=1)
def preload() -> None:
    """Import what parsing a plan needs, once, in the dag-processor's manager.

    The manager forks one child per file it parses (the plan index among them), and a child
    inherits the parent's imported modules. Airflow pre-imports the ``airflow.*`` modules a Python
    DAG file imports; a YAML file names none, so without this every cycle's child would import the
    plan models, Jinja and the Task SDK again.
    """
    import pendulum  # noqa: F401
    import yaml  # noqa: F401
    from airflow.sdk import DAG, Asset, Param  # noqa: F401

    import c2b.plan.checks  # noqa: F401
    import c2b.plan.templates  # noqa: F401
    from c2b.plan.model import valid_timezone

    _plan_step_class()
    _importer_class()
    _dag_config_defaults()
    valid_timezone("Asia/Shanghai")


def plan_importer() -> Any:
    """Return a new :class:`PlanImporter` instance."""
    return _importer_class()()


def plan_importer_active() -> bool:
    """Return whether Airflow's importer registry hands ``.yaml`` plan files to the plan importer."""
    from airflow.dag_processing.importers import get_importer_registry

    return isinstance(get_importer_registry().get_importer(f"x{PLAN_SUFFIX}"), _importer_class())


def install_plan_importer() -> bool:
    """Register the plan importer with Airflow in this process; return whether it is active.

    Called from ``airflow_local_settings`` (imported by every Airflow process at start-up, before
    the dag-processor's manager module is imported). Idempotent. It is all or nothing: if this
    Airflow lacks either hook the importer is not registered and ``dags/c2b_plans.py`` loads the
    plans instead, so plans never silently disappear.

    Airflow 3.3.2's dag-processor lists files with ``airflow.utils.file.list_py_file_paths`` (``.py``
    and zip files only), not through the importer registry; the install extends that listing with
    the importer's own (its public ``list_dag_files``) and checks every listing: plan files without
    a listed index stop the dag-processor with :class:`PlanListingError` rather than vanish. So does
    a dag-processor that lists files neither way (a future Airflow).
    """
    try:
        import airflow.utils.file as airflow_file
        from airflow.dag_processing.importers import get_importer_registry
    except ImportError:
        return False
    original = getattr(airflow_file, "list_py_file_paths", None)
    if original is None:
        return False
    importer = plan_importer()
    if not getattr(original, "_c2b_plans", False):
        def list_py_file_paths(directory: Any, safe_mode: bool = True) -> list[str]:
            """Airflow's file listing plus plan indexes (what the dag-processor queues for parsing)."""
            paths = original(directory, safe_mode=safe_mode)
            if directory is not None and os.path.isdir(directory):
                known = set(paths)
                indexes = [p for p in importer.list_dag_files(directory) if p not in known]
                if indexes:
                    preload()
                paths += indexes
                check_listing(directory, paths)
                _remember_plan_files(directory, indexes)
                _track_plan_files_in_manager()
            return paths

        list_py_file_paths._c2b_plans = True  # type: ignore[attr-defined]
        airflow_file.list_py_file_paths = list_py_file_paths
        manager = sys.modules.get("airflow.dag_processing.manager")
        if manager is not None and hasattr(manager, "list_py_file_paths"):
            manager.list_py_file_paths = list_py_file_paths  # type: ignore[attr-defined]
    registry = get_importer_registry()
    if not isinstance(registry.get_importer(f"x{PLAN_SUFFIX}"), _importer_class()):
        registry.register(importer)
    if sys.argv[1:2] == ["dag-processor"]:
        check_dag_processor_listing()
    return True


def check_dag_processor_listing() -> None:
    """Raise :class:`PlanListingError` when the dag-processor would not list plans and plans exist.

    The dag-processor lists its files either through ``list_py_file_paths`` (extended above) or, in
    an Airflow that adopts it, through the importer registry (which asks the plan importer). A
    manager that uses neither would parse no plan; read its source (not imported here: this runs
    while Airflow is still starting) and refuse to start when the DAGs folder holds plan files.
    """
    import importlib.util

    spec = importlib.util.find_spec("airflow.dag_processing.manager")
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    if "list_py_file_paths" in source or "list_dag_files" in source:
        return
    from airflow.configuration import conf

    folder = conf.get("core", "dags_folder", fallback=None)
    if folder and os.path.isdir(folder):
        check_listing(folder, [])


# --- import-error bookkeeping of the dag-processor ------------------------------------------------
# Airflow keeps an import error under the path its importer names (a plan file here), but it clears
# errors only for the files it lists and parses: the index. Left alone, a broken plan's error would
# vanish at every bundle refresh (an "orphan": its file is not listed) until the index is parsed
# again, and a fixed plan's error would stay until that refresh. Two small wrappers in the
# dag-processor's manager make the plan files count as listed (observed) and as parsed whenever
# their index is. Without them (another Airflow) errors still appear per plan, only less promptly.

_plans_of_index: dict[str, set[str]] = {}  # index path relative to its bundle -> its plan files' paths


def _remember_plan_files(directory: str | os.PathLike[str], indexes: list[str]) -> None:
    for index in indexes:
        rel = os.path.relpath(index, directory)
        _plans_of_index[rel] = {os.path.relpath(p, directory) for p in plan_files(Path(index).with_suffix(""))}


def plan_files_of(rel_paths: Any) -> set[str]:
    """Return the plan files (bundle-relative) of the indexes among ``rel_paths``."""
    out: set[str] = set()
    for rel in rel_paths:
        out |= _plans_of_index.get(str(rel), set())
    return out


def _track_plan_files_in_manager() -> None:
    manager = sys.modules.get("airflow.dag_processing.manager")
    cls = getattr(manager, "DagFileProcessorManager", None)
    if manager is None or cls is None or getattr(cls, "_c2b_plans", False):
        return
    observed = getattr(cls, "_get_observed_filelocs", None)
    persist = getattr(manager, "update_dag_parsing_results_in_db", None)
    if observed is None or persist is None:
        import logging

        logging.getLogger(__name__).warning(
            "c2b: this Airflow's dag-processor lacks the hooks that keep plan import errors in step with "
            "their files; a broken plan's error may lag behind until the next bundle refresh")
        return

    def _get_observed_filelocs(self: Any, present: Any) -> set[str]:
        found = observed(self, present)
        return found | plan_files_of(found)

    def update_dag_parsing_results_in_db(*args: Any, files_parsed: Any = None, **kwargs: Any) -> Any:
        if files_parsed:
            files_parsed = set(files_parsed) | {(bundle, plan) for bundle, rel in files_parsed
                                                for plan in plan_files_of([rel])}
        return persist(*args, files_parsed=files_parsed, **kwargs)

    cls._get_observed_filelocs = _get_observed_filelocs
    manager.update_dag_parsing_results_in_db = update_dag_parsing_results_in_db  # type: ignore[attr-defined]
    cls._c2b_plans = True
