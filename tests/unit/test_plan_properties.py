"""Property: however a valid plan file is mutated, the factory either builds its DAG or raises
``PlanError`` only, and every line of that error names the file and a field."""

from __future__ import annotations

import copy
import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from c2b.airflow.dag_factory import load_plan_dag
from c2b.plan.errors import PlanError
from c2b.plan.load import parse_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.plan_samples import base_plan

INTERESTING = ["@daily", "@weekly", "0 9 * * 1", "0 25 * * *", "", " ", "auto", "zset", "all_users.sql",
               "nps_detractors.sql", "../x.sql", "x.sql", "Asia/Shanghai", "UTC", "Nowhere/City", "09:00-21:00",
               "21:00-09:00", "25:00-26:00", "https://example.com/x", "ftp://x", "{{ nickname }}", "{{ nick }}",
               "{{ offer.amount }}", "{{ assets.video }}", "{% if %}", "{{ x | nofilter }}", "{{", "push", "sms",
               "inapp", "outbox", "webhook", "c2b_push", "price_up_coupon", "tutorial", "coupon_push",
               "red_packet_sms", "control", "CNY", "airflow://x", "warehouse://c2b/nps", "price_too_low"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(INTERESTING) | st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1))
           | st.sampled_from([0, 1, 2, 3, 12, 16, 1024, 2048, -1, 0.5]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=12) | st.sampled_from(INTERESTING), inner, max_size=3),
                      max_leaves=6)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(base_plan())
EXAMPLES = int(os.environ.get("C2B_HYPOTHESIS_EXAMPLES", "300"))  # raise it for a longer hunt
KEYS = sorted({p[-1] for p in PATHS if isinstance(p[-1], str)})


@st.composite
def mutated_plans(draw: st.DrawFn) -> dict:
    data = base_plan()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this branch
        op = draw(st.sampled_from(["set", "set", "delete", "add_key", "rename"]))
        if op == "set":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add_key" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(KEYS))] = draw(values)
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS) | st.text(max_size=12))] = parent.pop(path[-1])
    return data


def _check_error(exc: PlanError, path: str) -> None:
    assert exc.problems, "a PlanError lists at least one problem"
    for line, (field, message, _) in zip(str(exc).splitlines(), exc.problems, strict=True):
        assert line.startswith(f"{path}: "), line
        assert field, f"problem without a field path: {line}"
        assert line.startswith(f"{path}: {field}: ") and message, line


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_plans())
def test_mutated_plans_raise_only_plan_errors(data: dict) -> None:
    # In memory (the validation alone) ...
    try:
        parse_plan(copy.deepcopy(data), "dags/plans/sample_plan.yaml", check_files=True)
    except PlanError as exc:
        _check_error(exc, "dags/plans/sample_plan.yaml")
    # ... and as a file through the whole factory (YAML, validation, Airflow DAG).
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample_plan.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        try:
            dag = load_plan_dag(path)
        except PlanError as exc:
            _check_error(exc, exc.path)
            assert exc.path.endswith("sample_plan.yaml")
        else:
            assert dag.dag_id == "sample_plan"
