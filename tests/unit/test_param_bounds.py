"""Params that validate must be able to run: finite numbers the SQL types hold, header ranges (#11.7)."""

from __future__ import annotations

import math

import pytest
import yaml
from c2b.plan.errors import PlanError
from c2b.plan.load import load_plan

from devtools.plan_samples import base_plan, mutate

ROOT_PLAN = "high_value_cancellations.sql"


def _errors(tmp_path, params: dict) -> list[str]:
    data = mutate(base_plan(), "audience", {"segment": ROOT_PLAN, "params": params})
    path = tmp_path / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        load_plan(path)
    except PlanError as exc:
        return str(exc).splitlines()
    return []


@pytest.mark.parametrize(("params", "field", "text"), [
    ({"min_price": math.nan, "days": 14}, "audience.params.min_price", "must be a finite number"),
    ({"min_price": math.inf, "days": 14}, "audience.params.min_price", "must be a finite number"),
    ({"min_price": 1e26, "days": 14}, "audience.params.min_price", "must be"),
    ({"min_price": 3000, "days": 10**26}, "audience.params.days", "must fit a SQL INTEGER"),
    ({"min_price": 3000, "days": 2**31 - 1}, "audience.params.days", "must be from 1 to 3650"),
    ({"min_price": 3000, "days": 0}, "audience.params.days", "must be from 1 to 3650"),
])
def test_numbers_a_segment_cannot_run_are_rejected_at_validation(tmp_path, params, field, text) -> None:
    lines = _errors(tmp_path, params)
    assert any(field in ln and text in ln for ln in lines), lines


def test_numbers_in_range_validate(tmp_path) -> None:
    assert _errors(tmp_path, {"min_price": 3000, "days": 14}) == []
    assert _errors(tmp_path, {"min_price": 100_000_000, "days": 3650}) == []


def test_number_problem_reads_a_range_among_other_notes() -> None:
    from c2b.plan.checks import number_problem

    assert number_problem("numeric", 5.0, "CNY, 0-10") is None
    assert number_problem("numeric", 11.0, "CNY, 0-10") == "must be from 0 to 10"
    assert number_problem("integer", -(2**31) - 1) is not None
