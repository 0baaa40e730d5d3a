"""A broken plan is its own Airflow import error and never stops the other plans from loading.

Through a real ``DagBag`` (the class the dag-processor and the workers' task runner parse with), on
a DAGs folder holding the example plans, one broken plan and the fallback loader.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "dags" / "plans").glob("*.yaml"))
GOOD_IDS = {p.stem for p in EXAMPLES}
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
    # Every good plan loads, from its own YAML file; the fallback loader adds no duplicate.
    assert set(bag.dags) == GOOD_IDS
    for dag_id, dag in bag.dags.items():
        assert dag.relative_fileloc == f"plans/{dag_id}.yaml"
        assert [t.task_id for t in dag.tasks] == ["extract_audience", "load_shards", "deliver", "report", "cleanup"]


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


def test_a_reparse_uses_the_plan_cache_but_never_for_the_broken_plan(
        dags_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the dag-processor does every 30 s: the same DAGs and the same error, the good plans cached."""
    from airflow.serialization.serialized_objects import DagSerialization
    from c2b.plan import load as plan_module

    monkeypatch.setenv("C2B_PLAN_CACHE", str(tmp_path / "cache"))
    validated: list[str] = []
    real = plan_module.load_plan
    monkeypatch.setattr(plan_module, "load_plan",
                        lambda path, **kw: validated.append(Path(path).name) or real(path, **kw))
    cold = _bag(dags_folder)
    assert sorted(validated) == sorted([p.name for p in EXAMPLES] + ["broken_plan.yaml"])
    assert len(list((tmp_path / "cache").glob("*.pickle"))) == len(EXAMPLES)
    validated.clear()
    warm = _bag(dags_folder)
    assert validated == ["broken_plan.yaml"]  # validated (and reported) on every parse
    assert warm.import_errors == cold.import_errors and set(warm.dags) == GOOD_IDS
    for dag_id in GOOD_IDS:  # the same DAG, as the scheduler stores it
        assert DagSerialization.to_dict(warm.dags[dag_id]) == DagSerialization.to_dict(cold.dags[dag_id])


def test_a_worker_parses_only_its_plan_file(dags_folder: Path) -> None:
    """The task runner re-parses the DAG's file: with the importer that is the one YAML file."""
    from airflow.dag_processing.dagbag import BundleDagBag

    target = dags_folder / "plans" / "cancelled_price_coupon.yaml"
    bag = BundleDagBag(dag_folder=str(target), safe_mode=False, load_op_links=False,
                       bundle_path=dags_folder, bundle_name="dags-folder")
    assert list(bag.dags) == ["cancelled_price_coupon"] and bag.import_errors == {}


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
    assert json.loads(out[1]) == sorted(["c2b_plans.py", "broken_plan.yaml", *(p.name for p in EXAMPLES)])
