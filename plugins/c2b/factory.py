"""The DAG factory: every ``dags/plans/*.yaml`` becomes one Airflow DAG.

At parse time the factory only reads and validates YAML; warehouse, Redis and channels are touched
inside tasks. Task bodies live in :mod:`c2b.runtime`; the wrappers here resolve Airflow context and
connections. Graph of a plan DAG::

    extract_audience >> load_shards >> deliver[shard 1..N] >> report
                                                            >> cleanup (all_done)

``report`` and ``cleanup`` are both leaves, so a failed shard fails the run even though cleanup
always runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from c2b.plan import Plan, PlanError, load_plan


def _doc_md(plan: Plan, path: Path) -> str:
    touches = "\n".join(f"- **{t.name}** via `{t.channel}`" for t in plan.touches)
    return (f"## {plan.id}\n\n{plan.description}\n\n**Segment:** `{plan.audience.segment}` "
            f"with `{plan.audience.params}`\n\n**Touches:**\n{touches}\n\n"
            f"**Shards:** {plan.delivery.shards}, page size {plan.delivery.page_size}\n\n"
            f"_Plan file:_ `{path.name}`")


def build_dag(plan: Plan, path: Path) -> Any:
    """Return the Airflow DAG of one validated plan."""
    from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task

    default_args = {
        "owner": plan.owner,
        "retries": plan.delivery.retries,
        "retry_delay": timedelta(seconds=plan.delivery.retry_delay_seconds),
    }
    params = {
        "dry_run": Param(False, type="boolean",
                         description="Extract, assign, shard and report, but send nothing."),
        "sample": Param(None, type=["null", "integer"], minimum=1,
                        description="Only the first N users of the segment (a capped trial)."),
        "only_touches": Param([], type="array", items={"type": "string", "enum": [t.name for t in plan.touches]},
                              description="Send only these touches (empty: all)."),
    }

    def run_id() -> str:
        return get_current_context()["run_id"]

    with DAG(
        dag_id=plan.id,
        description=(plan.description.strip().splitlines() or [""])[0][:200],
        doc_md=_doc_md(plan, path),
        schedule=plan.schedule,
        start_date=datetime.combine(plan.start_date, datetime.min.time(), tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=1,
        tags=sorted({"c2b", *plan.tags}),
        default_args=default_args,
        params=params,
    ) as dag:

        @task
        def extract_audience() -> dict[str, Any]:
            from c2b import airflow_glue, runtime

            sample = get_current_context()["params"].get("sample")
            # Redis only for suppression-list / recently-contacted exclusions.
            redis = airflow_glue.get_redis() if plan.audience.exclude else None
            return runtime.step_extract(plan, run_id(), airflow_glue.get_warehouse(), sample, redis=redis)

        @task
        def load_shards(extract: dict[str, Any]) -> list[int]:
            from c2b import airflow_glue, runtime

            return runtime.step_load(plan, run_id(), airflow_glue.get_redis(), extract)

        @task(map_index_template="shard {{ shard_label }}")
        def deliver(shard: int) -> dict[str, Any]:
            from c2b import airflow_glue

            ctx = get_current_context()
            ctx["shard_label"] = shard  # type: ignore[typeddict-unknown-key]
            return airflow_glue.deliver_shard(plan, run_id(), shard, dict(ctx["params"]))

        @task(trigger_rule=TriggerRule.NONE_FAILED)
        def report(extract: dict[str, Any], shards: list[int], stats: Any) -> dict[str, Any]:
            from c2b import runtime

            return runtime.step_report(plan, run_id(), extract, shards, list(stats or []))

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def cleanup() -> int:
            from c2b import airflow_glue, runtime

            return runtime.step_cleanup(plan, run_id(), airflow_glue.get_redis())

        extracted = extract_audience()
        shards = load_shards(extracted)
        delivered = deliver.expand(shard=shards)
        report(extracted, shards, delivered)
        delivered >> cleanup()
    return dag


def plan_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("."))


def build_dags(folder: Path, only_dag_id: str | None = None) -> tuple[dict[str, Any], list[PlanError]]:
    """Build the DAG of every valid plan in ``folder``; return DAGs by id and the plan errors.

    ``only_dag_id`` (from Airflow's parsing context on a worker) builds just that plan's DAG.
    Plan files are named ``<id>.yaml``, which is what makes that shortcut possible.
    """
    files = plan_files(folder)
    if only_dag_id:
        files = [p for p in files if p.stem == only_dag_id]
    dags: dict[str, Any] = {}
    errors: list[PlanError] = []
    for path in files:
        try:
            plan = load_plan(path)
            if plan.id != path.stem:
                raise PlanError(path, [("id", f"must equal the file name: rename the file to {plan.id}.yaml "
                                              f"or set id: {path.stem}")])
            dags[plan.id] = build_dag(plan, path)
        except PlanError as exc:
            errors.append(exc)
    return dags, errors
