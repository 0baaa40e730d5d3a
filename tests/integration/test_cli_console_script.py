"""The installed ``c2b`` command works as the docs type it, from any folder.

Plans, segments and run files are found from the installed package's repository (or the
``C2B_*`` settings), never from the current directory; a missing Airflow Connection is a
one-line message, not a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from c2b.airflow.dag_factory import find_plan_file, plan_files

from devtools.demo_warehouse import build_demo_warehouse

ROOT = Path(__file__).resolve().parents[2]
C2B = Path(sys.executable).parent / "c2b"
PLANS = plan_files(ROOT / "dags" / "plans")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd`` with none of the project's settings in the environment."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("C2B_", "AIRFLOW_CONN_", "AIRFLOW__CORE__", "AIRFLOW_HOME", "PYTHONPATH"))}
    return subprocess.run([str(C2B), *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


def test_the_console_script_is_installed() -> None:
    assert C2B.exists(), f"no {C2B}: the venv should install this repo in editable mode (scripts/lib.sh)"


def test_validate_from_another_folder_finds_the_repository_plans(tmp_path: Path) -> None:
    out = run(["validate"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{len(PLANS)} plan(s) valid, 0 with errors" in out.stderr


def test_validate_reads_a_relative_path_from_the_current_folder(tmp_path: Path) -> None:
    text = (find_plan_file(ROOT / "dags" / "plans", "cancelled_price_ab")).read_text()
    (tmp_path / "cancelled_price_ab.yaml").write_text(text.replace("price_too_low", "price_to_low"))
    out = run(["validate", "cancelled_price_ab.yaml"], tmp_path)
    assert out.returncode == 1
    # The segment file (and its declared values) came from the repository's include/sql/segments/.
    assert "cancelled_price_ab.yaml: audience.params.reason: 'price_to_low' is not allowed" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_preview_from_another_folder_uses_the_repository_segments(tmp_path: Path) -> None:
    warehouse = tmp_path / "wh.duckdb"
    build_demo_warehouse(warehouse, users=2_000)
    out = run(["preview", "cancelled_price_coupon", "--warehouse", str(warehouse)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "segment cancelled_for_reason.sql" in out.stdout


def test_schema_and_reference_from_another_folder(tmp_path: Path) -> None:
    out = run(["schema", "--markdown"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (ROOT / "docs" / "plan-reference.md").read_text()


@pytest.mark.parametrize("args, conn_id", [(["preview", "cancelled_price_coupon"], "c2b_warehouse"),
                                           (["kill", "--status"], "c2b_redis")])
def test_a_missing_connection_is_a_message_not_a_traceback(tmp_path: Path, args: list[str], conn_id: str) -> None:
    out = run(args, tmp_path, AIRFLOW_HOME=str(tmp_path / "airflow"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"c2b {args[0]}: The conn_id `{conn_id}` isn't defined. Define that Airflow Connection" in out.stderr
