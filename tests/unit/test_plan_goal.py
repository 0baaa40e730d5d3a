"""A plan's ``goal:`` is validated like the rest of the plan: each problem names file, field and fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from c2b.plan.errors import PlanError
from c2b.plan.goal import goal_note
from c2b.plan.load import parse_plan

from devtools.plan_samples import base_plan, mutate

ROOT = Path(__file__).resolve().parents[2]
FILE = "dags/plans/sample_plan.yaml"
GOOD_GOAL = """-- Orders after a touch.
-- params: since (timestamp), until (timestamp), status (text: completed, in_progress)
-- columns: uid, event_time, value
SELECT uid, created_at AS event_time, 1.0 AS value FROM orders
WHERE created_at >= :since AND created_at < :until AND status = :status
"""
NO_EVENT_TIME = """-- A goal that forgot its time column.
-- params: since (timestamp), until (timestamp)
-- columns: uid, value
SELECT uid, 1.0 AS value FROM orders WHERE created_at >= :since AND created_at < :until
"""
NO_UID = """-- A goal without users.
-- params: (none)
-- columns: order_id, event_time
SELECT order_id, created_at AS event_time FROM orders
"""


@pytest.fixture(autouse=True)
def sql_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository's segments plus a private goals folder (C2B_SQL_DIR)."""
    root = tmp_path / "sql"
    shutil.copytree(ROOT / "include" / "sql" / "segments", root / "segments")
    goals = root / "goals"
    goals.mkdir()
    (goals / "good.sql").write_text(GOOD_GOAL)
    (goals / "no_event_time.sql").write_text(NO_EVENT_TIME)
    (goals / "no_uid.sql").write_text(NO_UID)
    monkeypatch.setenv("C2B_SQL_DIR", str(root))
    return root


def with_goal(goal: object, data: dict | None = None) -> dict:
    return mutate(data or base_plan(), "goal", goal)


def errors(data: dict) -> list[str]:
    try:
        parse_plan(data, FILE, text=yaml.safe_dump(data, sort_keys=False), check_files=True)
    except PlanError as exc:
        return str(exc).splitlines()
    return []


GOOD = {"metrics": {"sold": {"sql": "good.sql", "params": {"status": "completed"}},
                    "amount": {"sql": "good.sql", "params": {"status": "completed"}, "kind": "value"}},
        "primary": "amount", "window_days": 14}


def test_a_good_goal_is_read() -> None:
    plan = parse_plan(with_goal(GOOD), FILE, check_files=True)
    assert plan.goal is not None
    assert plan.goal.primary_name == "amount" and plan.goal.primary_metric.kind == "value"
    assert plan.goal.window_days == 14 and plan.goal.method == "sequential"
    defaults = parse_plan(with_goal({"metrics": {"sold": {"sql": "good.sql", "params": {"status": "completed"}}}}),
                          FILE, check_files=True).goal
    assert defaults is not None and (defaults.window_days, defaults.primary_name) == (7, "sold")


def test_goal_sql_missing_event_time_or_uid_is_an_error_naming_the_fix() -> None:
    lines = errors(with_goal({"metrics": {"sold": {"sql": "no_event_time.sql"}, "who": {"sql": "no_uid.sql"}}}))
    assert any(line.startswith(f"{FILE}: goal.metrics.sold.sql: no_event_time.sql must return event_time")
               and "(line " in line for line in lines), lines
    assert any(line.startswith(f"{FILE}: goal.metrics.who.sql: no_uid.sql must return uid") for line in lines), lines


@pytest.mark.parametrize("days,fix", [(0, "must be >= 1"), (400, "must be <= 30"), ("7", "must be a whole number")])
def test_window_out_of_range_is_an_error(days: object, fix: str) -> None:
    lines = errors(with_goal({**GOOD, "window_days": days}))
    assert lines and lines[0].startswith(f"{FILE}: goal.window_days: {fix}"), lines


@pytest.mark.parametrize("goal,expected", [
    ({**GOOD, "primary": "sould"}, "goal.primary: no metric named 'sould' (did you mean 'sold'?)"),
    ({"metrics": {}}, "goal.metrics: must have at least 1 item"),
    ({"metrics": {"sold": {"sql": "nope.sql"}}}, "goal.metrics.sold.sql: no goal file include/sql/goals/nope.sql"),
    ({"metrics": {"sold": {"sql": "../segments/all_users.sql"}}}, "goal.metrics.sold.sql: must be a .sql file name"),
    ({"metrics": {"sold": {"sql": "good.sql"}}}, "goal.metrics.sold.params: missing status"),
    ({"metrics": {"sold": {"sql": "good.sql", "params": {"status": "done"}}}},
     "goal.metrics.sold.params.status: 'done' is not allowed"),
    ({"metrics": {"sold": {"sql": "good.sql", "params": {"status": "completed", "since": "2026-01-01"}}}},
     "goal.metrics.sold.params.since: attribution binds this param itself"),
    ({"metrics": {"sold": {"sql": "no_uid.sql", "kind": "value"}}}, "goal.metrics.sold.kind: kind value needs a value"),
    ({"metrics": {"sold": {"sql": "good.sql", "kind": "sum"}}}, "goal.metrics.sold.kind: 'sum' is not allowed"),
    ({**GOOD, "method": "bayes"}, "goal.method: 'bayes' is not allowed"),
    ({**GOOD, "windows": 3}, "goal.windows: unknown field (did you mean 'window_days'?)"),
    ({"metrics": {"Sold": {"sql": "good.sql", "params": {"status": "completed"}}}},
     "goal.metrics.Sold: a metric name must be lower_snake_case"),
])
def test_bad_goal_fields(goal: dict, expected: str) -> None:
    lines = errors(with_goal(goal))
    assert any(line.startswith(f"{FILE}: {expected}") for line in lines), lines


def test_goal_on_a_plan_without_control_is_allowed_and_the_note_says_why() -> None:
    data = mutate(with_goal(GOOD), "experiment.variants.control")
    plan = parse_plan(data, FILE, check_files=True)
    assert not plan.has_control and plan.goal is not None
    note = goal_note(plan.goal is not None, plan.has_control)
    assert note is not None and "no control group" in note
    assert goal_note(True, True) is None


def test_example_plans_with_a_control_group_carry_a_goal(monkeypatch: pytest.MonkeyPatch) -> None:
    from c2b.airflow.dag_factory import plan_files
    from c2b.plan.load import load_plan

    monkeypatch.delenv("C2B_SQL_DIR")
    plans = [load_plan(path) for path in plan_files(ROOT / "dags" / "plans")]
    assert sum(p.has_control for p in plans) >= 2  # the example plans of both lines
    for plan in plans:
        if plan.has_control:
            assert plan.goal is not None, plan.id
