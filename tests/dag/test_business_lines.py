"""Business lines: plans in dags/plans/<line>/ get their line's owners, tags, pool and cap; a plan or
line file that breaks the rules is an error naming file and field (through DagBag, as Airflow sees it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from c2b.airflow.dag_factory import find_plan_file, is_plan_file, plan_files
from c2b.cli import main as cli
from c2b.plan.errors import PlanError
from c2b.plan.lines import line_of, with_line
from c2b.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = ROOT / "dags" / "plans"


def test_the_demo_has_two_lines_with_their_own_settings() -> None:
    lines = {p.parent.name: line_of(p) for p in plan_files(PLANS)}
    assert set(lines) == {"growth", "care"}
    growth, care = lines["growth"], lines["care"]
    assert growth.settings.pool != care.settings.pool
    assert growth.holdout is not None and care.holdout is None
    assert growth.settings.frequency_cap.per_day != care.settings.frequency_cap.per_day
    assert growth.caps.per_week and care.caps.per_week and growth.caps.per_channel != care.caps.per_channel
    # A plan without its own cap takes the line's; one with a cap keeps it.
    coupon = find_plan_file(PLANS, "cancelled_price_coupon")
    assert with_line(load_plan(coupon), coupon).delivery.frequency_cap == 3
    ab = find_plan_file(PLANS, "cancelled_price_ab")
    assert with_line(load_plan(ab), ab).delivery.frequency_cap == 2


def test_line_settings_reach_the_dags() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"), bundle_path=ROOT / "dags", bundle_name="dags-folder")
    assert bag.import_errors == {}
    coupon, call = bag.dags["cancelled_price_coupon"], bag.dags["high_value_callback"]
    # Every plan is built by the plan index (one parse unit); the Code tab shows the plan's own file.
    assert coupon.relative_fileloc == "plans.yaml"
    assert coupon.fileloc == str(ROOT / "dags" / "plans" / "growth" / "cancelled_price_coupon.yaml")
    assert {"growth", "line:growth"} <= set(coupon.tags) and {"care", "line:care"} <= set(call.tags)
    assert {t.pool for t in coupon.tasks} == {"c2b_growth"} and {t.pool for t in call.tasks} == {"c2b_care"}
    assert coupon.tasks[0].owner == "c2b-ops,c2b-growth" and call.tasks[0].owner == "c2b-cs"


@pytest.fixture
def dags_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags"
    shutil.copytree(PLANS, folder / "plans")
    shutil.copy(ROOT / "dags" / "c2b_plans.py", folder)
    return folder


def _errors(folder: Path) -> dict[str, str]:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder").import_errors


def test_a_connection_outside_the_line_is_an_error_naming_file_and_field(dags_folder: Path) -> None:
    plan = dags_folder / "plans" / "care" / "nps_detractor_care.yaml"
    plan.write_text(plan.read_text().replace("connection: c2b_call", "connection: c2b_sms"))
    errors = _errors(dags_folder)
    assert list(errors) == ["plans/care/nps_detractor_care.yaml"]
    assert errors["plans/care/nps_detractor_care.yaml"].startswith(
        "plans/care/nps_detractor_care.yaml: touches[0].connection: 'c2b_sms' is not a connection of business "
        "line care; its line.yaml allows: c2b_call, c2b_push (line ")
    assert cli(["validate", str(plan)]) == 1


def test_a_plan_in_a_line_folder_without_settings_is_an_error(dags_folder: Path) -> None:
    (dags_folder / "plans" / "care" / "line.yaml").unlink()
    errors = _errors(dags_folder)
    assert set(errors) == {"plans/care/high_value_callback.yaml", "plans/care/nps_detractor_care.yaml"}
    assert "care/line.yaml does not exist; add it (owners: [...] at least)" in \
        errors["plans/care/high_value_callback.yaml"]


@pytest.mark.parametrize("text, field, says", [
    ("pool: c2b_care\n", "owners", "missing; this field is required"),
    ("owners: [a]\nowner: b\n", "owner", "unknown key; allowed: owners, description"),
    ("owners: []\n", "owners", "at least 1"),
    ("owners: [a]\nglobal_holdout: {share: 0.9, salt: s}\n", "global_holdout.share", "<= 0.5"),
    ("owners: [a]\nfrequency_cap: {per_day: 0}\n", "frequency_cap.per_day", ">= 1"),
    ("owners: [a]\nfrequency_cap: {per_week: -2}\n", "frequency_cap.per_week", ">= 1"),
    ("owners: [a]\nfrequency_cap: {per_month: 3}\n", "frequency_cap.per_month",
     "unknown key; allowed: per_day, per_week, per_channel"),
    ("owners: [a]\nfrequency_cap: {per_day: 3, per_week: 2}\n", "frequency_cap.per_week",
     "2 is below per_day 3, but a week holds every day of it: set per_week to at least 3"),
    ("owners: [a]\nfrequency_cap: {}\n", "frequency_cap", "set per_day, per_week and/or per_channel"),
    ("owners: [a]\nfrequency_cap: {per_channel: {fax: {per_day: 1}}}\n", "frequency_cap.per_channel.fax",
     "unknown channel 'fax'; channels: push, sms, inapp, outbound_call, private_domain, webhook, outbox"),
    ("owners: [a]\nfrequency_cap: {per_channel: {sms: {per_week: 0}}}\n", "frequency_cap.per_channel.sms.per_week",
     ">= 1"),
    ("owners: [a]\nfrequency_cap: {per_channel: {sms: {per_day: 2, per_week: 1}}}\n",
     "frequency_cap.per_channel.sms.per_week", "1 is below per_day 2"),
    ("owners: [a]\nfrequency_cap: {per_channel: {sms: {per_hour: 1}}}\n", "frequency_cap.per_channel.sms.per_hour",
     "unknown key; allowed: per_day, per_week"),
    ("owners: [a]\nfrequency_cap: {per_channel: {sms: {}}}\n", "frequency_cap.per_channel.sms",
     "set per_day and/or per_week"),
    ("owners: [a]\nfrequency_cap: {per_week: 4, per_channel: {push: {per_week: 5}}}\n",
     "frequency_cap.per_channel.push.per_week", "5 is above the line's per_week 4, so it would never apply"),
], ids=["no-owner", "unknown-key", "empty-owners", "holdout-too-big", "cap-zero", "week-negative", "cap-unknown-key",
        "week-below-day", "cap-empty", "unknown-channel", "channel-week-zero", "channel-week-below-day",
        "channel-unknown-key", "channel-empty", "channel-above-line"])
def test_bad_line_settings_name_file_and_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    line = tmp_path / "plans" / "ops"
    line.mkdir(parents=True)
    shutil.copy(find_plan_file(PLANS, "high_value_callback"), line)
    (line / "line.yaml").write_text(text)
    with pytest.raises(PlanError) as info:
        line_of(line / "high_value_callback.yaml")
    assert any(ln.startswith(f"{line / 'line.yaml'}: {field}: ") and says in ln for ln in info.value.lines()), \
        info.value.lines()


def test_a_plan_cap_looser_than_its_lines_is_an_error_naming_plan_file_and_field(dags_folder: Path) -> None:
    plan = dags_folder / "plans" / "care" / "nps_detractor_care.yaml"
    plan.write_text(plan.read_text().replace("frequency_cap: 1", "frequency_cap: 2"))
    with pytest.raises(PlanError) as info:
        with_line(load_plan(plan), plan)
    assert info.value.lines()[0].startswith(
        f"{plan}: delivery.frequency_cap: 2 is above business line care's frequency_cap.per_day 1 (care/line.yaml): "
        "a plan may be stricter than its line, never looser; set at most 1, or remove it to take the line's (line ")


def test_plan_file_discovery() -> None:
    assert is_plan_file("dags/plans/x.yaml") and is_plan_file("dags/plans/growth/x.yaml")
    assert not is_plan_file("dags/plans/growth/line.yaml") and not is_plan_file("dags/plans/a/b/x.yaml")
    assert not any(p.name == "line.yaml" for p in plan_files(PLANS))


def test_the_fallback_loaders_dags_apply_their_line_too(c2b_env: Path) -> None:
    """A DAG the fallback loader built (fileloc dags/c2b_plans.py) still finds its plan's line:
    the extract holds out the line's global holdout and the audit names the line."""
    from c2b.airflow.dag_factory import build_dags, plan_of, run_step

    dag = build_dags(PLANS, "cancelled_price_coupon")[0]["cancelled_price_coupon"]
    dag.fileloc = str(ROOT / "dags" / "c2b_plans.py")
    context = {"run_id": "fallback_run", "dag": dag, "dag_run": None,
               "params": {"dry_run": False, "sample": None, "only_touches": []}}
    out = run_step("extract_audience", plan_of(dag), context, {}, None)
    assert out["counts"]["global_holdout"] > 0
    assert out["audit"]["line"] == "growth"
    assert out["audit"]["plan_file"] == str(find_plan_file(PLANS, "cancelled_price_coupon"))
