"""The results DAG of a plan: ``<plan>__results``, daily, counts conversions of the plan's runs.

Why a daily schedule and not a trigger on the plan's report Asset: conversions arrive in the
warehouse over the days after a send, and nothing announces them; the report Asset fires once, at
the send, when there is nothing to count yet. A daily run re-counts every run of the plan whose
attribution window is still open (and any run never counted), until the window closes.

Each run counts ``as of`` its data interval's end, so re-running a day gives the same numbers; a
result computed at a later clock is never replaced by an earlier one (:mod:`c2b.results.store`).
Built only for plans with a ``goal:``; it uses the plan's warehouse connection (``c2b_warehouse``)
and the ``c2b_results`` store, both resolved in :mod:`c2b.airflow.resources`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from c2b.plan.model import Plan

log = logging.getLogger(__name__)

SUFFIX = "__results"


def results_dag_id(plan_id: str) -> str:
    return f"{plan_id}{SUFFIX}"


def runs_to_attribute(runs: list[tuple[str, datetime]], counted: set[str], window_days: int,
                      clock: datetime) -> list[str]:
    """Return the runs whose window is still open at ``clock``, or that were never counted.

    A run's window closes ``window_days`` after it was logged, plus a day for late deliveries
    (quiet hours) and for events that land in the warehouse late.
    """
    horizon = timedelta(days=window_days + 1)
    return [r for r, logged_at in runs if r not in counted or clock < logged_at + horizon]


def attribute_plan(plan: Plan, as_of: datetime) -> dict[str, Any]:
    """The ``attribute`` task: count conversions of every open run of the plan as of ``as_of``."""
    from c2b.airflow import resources
    from c2b.results.attribution import attribute, naive_utc

    assert plan.goal is not None
    store = resources.get_results_store()
    clock = naive_utc(as_of)
    runs = store.runs(plan.id)
    primary = plan.goal.primary_name
    counted = {r for r, _ in runs if store.result(plan.id, r, primary) is not None}
    todo = runs_to_attribute(runs, counted, plan.goal.window_days, clock)
    if not runs:
        log.info("plan %s has no delivered run yet: nothing to attribute", plan.id)
    warehouse = resources.get_warehouse() if todo else None
    done = {}
    for run_id in todo:
        result = attribute(plan, run_id, store, warehouse, as_of=clock)
        done[run_id] = {v: a["converted"] for v, a in result[primary]["variants"].items()}
    return {"as_of": clock.isoformat(), "runs": done}


def build_results_dag(plan: Plan, path: Path) -> Any:
    """Return the results DAG of a plan that has a goal."""
    import pendulum
    from airflow.sdk import DAG, Asset

    from c2b.airflow.dag_factory import results_asset_uri

    assert plan.goal is not None
    first = plan.first_day
    op: Any = _attribute_class()
    with DAG(
        dag_id=results_dag_id(plan.id),
        description=f"Conversions of {plan.id}'s runs ({plan.goal.window_days}-day window), daily",
        doc_md=(f"## {plan.id}: results\n\n{__doc__}\n\nMetrics: "
                + ", ".join(f"`{n}` ({m.kind}, `{m.sql}`)" for n, m in plan.goal.metrics.items())
                + f"; primary `{plan.goal.primary_name}`; {plan.goal.method} intervals.\n\n"
                  f"_Plan file:_ `{path.name}`"),
        schedule="@daily",
        start_date=pendulum.datetime(first.year, first.month, first.day, tz=plan.window.timezone),
        catchup=False,
        max_active_runs=1,
        tags=sorted({"c2b", "c2b_results", *plan.tags}),
        default_args={"owner": plan.owner, "retries": 2, "retry_delay": timedelta(minutes=5)},
    ) as dag:
        op(task_id="attribute", plan_path=str(path), outlets=[Asset(uri=results_asset_uri(plan.id))])
    return dag


@lru_cache(maxsize=1)
def _attribute_class() -> type:
    from airflow.sdk import BaseOperator

    class AttributeResults(BaseOperator):
        """Count a plan's conversions (the plan is re-read from its file, as a worker has it)."""

        ui_color = "#e8f5e9"

        def __init__(self, *, plan_path: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.plan_path = plan_path

        def execute(self, context: Any) -> Any:
            from airflow.sdk import Asset

            from c2b.airflow.dag_factory import results_asset_uri
            from c2b.plan.load import load_plan

            as_of = context.get("data_interval_end") or context.get("logical_date") or datetime.now(UTC)
            plan = load_plan(Path(self.plan_path))
            done = attribute_plan(plan, as_of)
            # The results Asset's event says which runs were counted, and their conversions.
            context["outlet_events"][Asset(uri=results_asset_uri(plan.id))].extra = done
            return done

    AttributeResults.__module__ = __name__
    return AttributeResults
