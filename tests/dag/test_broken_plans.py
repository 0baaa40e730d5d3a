"""A broken plan is its own Airflow import error and never stops the other plans from loading.

Through a real ``DagBag`` (the class the dag-processor and the workers' task runner parse with), on
a DAGs folder holding the plan index, the example plans, one broken plan and the fallback loader.
``tests/dag/test_plan_index_live.py`` checks the same under a real dag-processor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from c2b.airflow.dag_factory import plan_files
from c2b.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = plan_files(ROOT / "dags" / "plans")  # copied flat: plans in no business line
# Each good plan's DAG and, for a plan with a goal, its results DAG (built from the same file)
GOOD_IDS = {p.stem for p in EXAMPLES} | {f"{p.stem}__results" for p in EXAMPLES
                                          if load_plan(p, check_files=False).goal is not None}
BROKEN = """\
id: broken_plan
description: A plan with a typo in a channel.
audience:
  segment: cancelled_for_reason.sql
  params: {reason: price_too_low, days: 30}
touches:
  - name: nudge
    channel: emial
    template: "Hi {{ nickname }}"
"""


@pytest.fixture
def dags_folder(tmp_path: Path) -> Path:
    """A DAGs folder like the project's: the fallback loader plus plans/, with one broken plan."""
    folder = tmp_path / "dags"
    (folder / "plans").mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", folder)
    shutil.copy(ROOT / "dags" / "plans.yaml", folder)
    for path in EXAMPLES:
        shutil.copy(path, folder / "plans")
    (folder / "plans" / "broken_plan.yaml").write_text(BROKEN)
    (folder / "plans" / "README.txt").write_text("not a plan")
    return folder


def _bag(folder: Path, **kwargs):  # -> DagBag
    from airflow.dag_processing.dagbag import DagBag

    # bundle_path makes paths relative to the folder, as in the dag-processor.
    return DagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder", **kwargs)


def test_the_plan_importer_is_installed_by_local_settings() -> None:
    from c2b.airflow.dag_factory import plan_importer_active

    assert plan_importer_active(), "plugins/airflow_local_settings.py should have registered the plan importer"


def test_broken_plan_is_the_only_import_error(dags_folder: Path) -> None:
    bag = _bag(dags_folder)
    assert set(bag.import_errors) == {"plans/broken_plan.yaml"}
    message = bag.import_errors["plans/broken_plan.yaml"]
    assert message == ("plans/broken_plan.yaml: touches[0].channel: 'emial' is not allowed; use one of: push, sms, "
                       "inapp, outbound_call, private_domain, webhook, outbox (line 8)")
    # Every good plan loads, from the one index unit; the fallback loader adds no duplicate.
    assert set(bag.dags) == GOOD_IDS
    for dag_id, dag in bag.dags.items():
        plan_id = dag_id.removesuffix("__results")
        assert dag.relative_fileloc == "plans.yaml"  # what the dag-processor tracks and a worker re-parses
        assert dag.fileloc == str(dags_folder / "plans" / f"{plan_id}.yaml")  # the UI's Code tab shows the plan
        assert [t.task_id for t in dag.tasks] == (
            ["attribute"] if dag_id != plan_id else ["extract_audience", "load_shards", "deliver", "report", "cleanup"])


def test_a_yaml_syntax_error_is_reported_with_its_line(dags_folder: Path) -> None:
    (dags_folder / "plans" / "broken_plan.yaml").write_text(BROKEN.replace("  params: {", "  params: {{"))
    bag = _bag(dags_folder)
    assert set(bag.import_errors) == {"plans/broken_plan.yaml"}
    assert "not valid YAML" in bag.import_errors["plans/broken_plan.yaml"]
    assert set(bag.dags) == GOOD_IDS


def test_fixing_the_plan_clears_its_error(dags_folder: Path) -> None:
    (dags_folder / "plans" / "broken_plan.yaml").write_text(BROKEN.replace("channel: emial", "channel: outbox"))
    bag = _bag(dags_folder)
    assert bag.import_errors == {}
    assert set(bag.dags) == GOOD_IDS | {"broken_plan"}


def test_a_worker_builds_only_its_plan(dags_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task runner re-parses the DAG's relative_fileloc (the index) with Airflow's parsing context."""
    from airflow.dag_processing.dagbag import BundleDagBag
    from c2b.plan import load as plan_module

    validated: list[str] = []
    real = plan_module.load_plan
    monkeypatch.setattr(plan_module, "load_plan",
                        lambda path, **kw: validated.append(Path(path).name) or real(path, **kw))
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "cancelled_price_coupon")
    bag = BundleDagBag(dag_folder=str(dags_folder / "plans.yaml"), safe_mode=False, load_op_links=False,
                       bundle_path=dags_folder, bundle_name="dags-folder")
    assert list(bag.dags) == ["cancelled_price_coupon"] and bag.import_errors == {}
    assert validated == ["cancelled_price_coupon.yaml"]
    # The daily results DAG of a plan with a goal comes from the same file, validated once.
    validated.clear()
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "cancelled_price_coupon__results")
    bag = BundleDagBag(dag_folder=str(dags_folder / "plans.yaml"), safe_mode=False, load_op_links=False,
                       bundle_path=dags_folder, bundle_name="dags-folder")
    assert list(bag.dags) == ["cancelled_price_coupon__results"] and bag.import_errors == {}
    assert validated == ["cancelled_price_coupon.yaml"]


def test_one_plan_file_on_its_own_is_imported_alone(dags_folder: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    target = dags_folder / "plans" / "cancelled_price_coupon.yaml"
    bag = BundleDagBag(dag_folder=str(target), safe_mode=False, load_op_links=False,
                       bundle_path=dags_folder, bundle_name="dags-folder")
    assert list(bag.dags) == ["cancelled_price_coupon", "cancelled_price_coupon__results"]
    assert bag.import_errors == {}


def test_an_alias_bomb_next_to_good_plans_is_one_quick_import_error(dags_folder: Path) -> None:
    """Issue #11 defect 5: one bad plan never slows or starves the others' parse."""
    import time
    import tracemalloc

    bomb = ["id: bomb", "audience:", "  segment: survey_answers.sql", "  params:", "    survey: why_sell",
            "    days: 30", '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
            *(f"    a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)), "    answer: *a8",
            "touches:", "  - {name: t, channel: outbox, template: hi}"]
    (dags_folder / "plans" / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    (dags_folder / "plans" / "broken_plan.yaml").unlink()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        bag = _bag(dags_folder)
    finally:
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert set(bag.dags) == GOOD_IDS
    assert set(bag.import_errors) == {"plans/bomb.yaml"}
    assert "anchors and aliases (&name / *name) are not allowed" in bag.import_errors["plans/bomb.yaml"]
    assert took < 20 and peak < 200_000_000, (took, peak)  # the whole folder, traced; the bomb alone is ~ms


def test_plan_files_without_a_listed_index_stop_the_dag_processor(dags_folder: Path) -> None:
    """The dag-processor's listing must reach every plan, through its index or itself, or it refuses to start."""
    import airflow.utils.file
    from c2b.airflow.dag_factory import PlanListingError, check_listing

    assert any(p.endswith("/plans.yaml") for p in airflow.utils.file.list_py_file_paths(str(dags_folder)))
    with pytest.raises(PlanListingError, match=r"7 plan file\(s\) in .*/plans/ but the dag-processor lists "
                                               r"neither them nor .*/plans.yaml"):
        check_listing(dags_folder, [str(dags_folder / "c2b_plans.py")])  # an Airflow that dropped them


def test_a_plans_folder_without_its_index_still_loads_one_unit_per_plan(dags_folder: Path) -> None:
    import airflow.utils.file

    (dags_folder / "plans.yaml").unlink()
    listed = airflow.utils.file.list_py_file_paths(str(dags_folder))
    assert sorted(Path(p).name for p in listed) == sorted(
        ["c2b_plans.py", "broken_plan.yaml", *(p.name for p in EXAMPLES)])
    bag = _bag(dags_folder)
    assert set(bag.dags) == GOOD_IDS and set(bag.import_errors) == {"plans/broken_plan.yaml"}
    assert {d.relative_fileloc for d in bag.dags.values()} == {f"plans/{p.stem}.yaml" for p in EXAMPLES}


@pytest.fixture
def without_importer():
    """Airflow as if airflow_local_settings had not run: the default importer registry only."""
    from airflow.dag_processing.importers.base import DagImporterRegistry

    DagImporterRegistry.reset()
    yield
    DagImporterRegistry.reset()
    from c2b.airflow.dag_factory import install_plan_importer

    assert install_plan_importer()


def test_fallback_loader_builds_the_good_plans(dags_folder: Path, without_importer: None) -> None:
    bag = _bag(dags_folder)
    assert bag.import_errors == {}
    assert set(bag.dags) == GOOD_IDS
    assert all(d.relative_fileloc == "c2b_plans.py" for d in bag.dags.values())
    warned = "\n".join(bag.captured_warnings[str(dags_folder / "c2b_plans.py")])
    assert "broken_plan.yaml: touches[0].channel: 'emial' is not allowed" in warned


def test_fallback_loader_builds_only_the_requested_plan(dags_folder: Path, without_importer: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "high_value_callback")
    bag = _bag(dags_folder)
    assert list(bag.dags) == ["high_value_callback"]


def test_every_airflow_process_installs_the_importer(dags_folder: Path) -> None:
    """A fresh ``import airflow`` (any component, any CLI) registers it and lists plan files."""
    code = ("import json, sys, airflow\n"
            "from airflow.dag_processing.manager import list_py_file_paths\n"
            "from c2b.airflow.dag_factory import plan_importer_active\n"
            "print(plan_importer_active())\n"
            "print(json.dumps(sorted(p.rsplit('/', 1)[1] for p in list_py_file_paths(sys.argv[1]))))\n")
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")}
    out = subprocess.run([sys.executable, "-c", code, str(dags_folder)], env=env, capture_output=True,
                         text=True, check=True, timeout=120).stdout.splitlines()
    assert out[0] == "True"
    assert json.loads(out[1]) == ["c2b_plans.py", "plans.yaml"]  # the plans are one parse unit


def test_a_dag_processor_that_lists_files_neither_way_refuses_to_start(
        dags_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A future Airflow whose manager neither calls list_py_file_paths nor the importer registry."""
    import importlib.machinery
    import importlib.util

    from airflow.configuration import conf
    from c2b.airflow import dag_factory

    future = tmp_path / "manager.py"
    future.write_text("def find_files(folder):\n    return sorted(folder.glob('*.py'))\n")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec(
        name, None, origin=str(future)) if name == "airflow.dag_processing.manager" else real_find_spec(name, *a))
    real_get = conf.get
    monkeypatch.setattr(conf, "get", lambda *a, **k: str(dags_folder) if tuple(a[:2]) == ("core", "dags_folder")
                        else real_get(*a, **k))
    with pytest.raises(dag_factory.PlanListingError, match="lists neither them nor"):
        dag_factory.check_dag_processor_listing()
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    dag_factory.check_dag_processor_listing()  # this Airflow: lists through list_py_file_paths
