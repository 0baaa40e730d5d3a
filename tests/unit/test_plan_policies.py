"""Offer budgets and re-entry rules in plan files: good values validate, bad ones name file and field."""

from __future__ import annotations

import pytest
import yaml
from c2b.plan.errors import PlanError
from c2b.plan.load import parse_plan
from c2b.plan.policies import DEFAULT_REENTRY_DAYS, reentry_days

from devtools.plan_samples import base_plan, mutate

FILE = "dags/plans/sample_plan.yaml"

RULES = [
    ("budget coupons > 0", "touches[0].offer.budget", {"coupons": 1}, {"coupons": 0},
     "touches[0].offer.budget.coupons", "must be > 0"),
    ("budget negative", "touches[0].offer.budget", {"coupons": 10, "amount": 99.5}, {"coupons": -5},
     "touches[0].offer.budget.coupons", "must be > 0"),
    ("budget amount > 0", "touches[0].offer.budget", {"amount": 0.01}, {"amount": -1.0},
     "touches[0].offer.budget.amount", "must be > 0"),
    ("budget says something", "touches[0].offer.budget", {"coupons": 3, "per": "plan"}, {"per": "run"},
     "touches[0].offer.budget", "set coupons"),
    ("budget unknown key", "touches[0].offer.budget", {"coupons": 3}, {"coupon": 3},
     "touches[0].offer.budget.coupon", "did you mean 'coupons'"),
    ("budget per", "touches[0].offer.budget", {"coupons": 3, "per": "plan"}, {"coupons": 3, "per": "day"},
     "touches[0].offer.budget.per", "run, plan"),
    ("reentry days", "reentry", {"after_days": 0}, {"after_days": -1}, "reentry.after_days", "is not a re-entry"),
    ("reentry once", "reentry", "once", "twice", "reentry", "'once' or {after_days: N}"),
    ("reentry bare number", "reentry", {"after_days": 30}, 30, "reentry", "{after_days: N}"),
]


def lines_of(data: dict) -> list[str]:
    try:
        parse_plan(data, FILE, text=yaml.safe_dump(data, sort_keys=False), check_files=True)
    except PlanError as exc:
        return str(exc).splitlines()
    return []


@pytest.mark.parametrize(("rule", "path", "good", "bad", "field", "text"), RULES, ids=[r[0] for r in RULES])
def test_rule(rule: str, path: str, good: object, bad: object, field: str, text: str) -> None:
    assert lines_of(mutate(base_plan(), path, good)) == [], f"{rule}: the good example must validate"
    lines = lines_of(mutate(base_plan(), path, bad))
    hits = [ln for ln in lines if ln.startswith(f"{FILE}: {field}: ")]
    assert hits, f"{rule}: no error names {field!r}: {lines}"
    assert any(text in ln for ln in hits), f"{rule}: expected {text!r} in {hits}"


def test_a_money_budget_needs_an_offer_amount() -> None:
    data = mutate(base_plan(), "touches[1].offer", {"type": "cs_call", "budget": {"amount": 100.0}})
    assert any(ln.startswith(f"{FILE}: touches[1].offer.budget.amount: ") and "by coupons" in ln
               for ln in lines_of(data))


def test_reentry_default_is_once_a_week() -> None:
    plan = parse_plan(base_plan(), FILE)
    assert reentry_days(plan.reentry) == DEFAULT_REENTRY_DAYS == 7
    assert reentry_days(parse_plan(mutate(base_plan(), "reentry", "once"), FILE).reentry) is None
