"""The CLI prints the failing task's error line, never a traceback (#11.7)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from c2b.airflow.dag_factory import find_plan_file
from c2b.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_preview_prints_the_warehouse_error_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = find_plan_file(ROOT / "dags" / "plans", "cancelled_price_coupon")
    assert main(["preview", str(plan), "--warehouse", str(tmp_path / "missing.duckdb")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "preview of cancelled_price_coupon failed: FileNotFoundError: DuckDB warehouse" in err


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("C2B_TRACEBACK", raising=False)
    monkeypatch.setenv("C2B_REDIS_URL", "redis://127.0.0.1:1")  # nothing listens there
    assert main(["kill", "--status"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("c2b kill: ConnectionError: ")


def test_failed_task_errors_are_read_from_a_dag_test_log() -> None:
    from c2b.results.task_errors import failed_task_errors

    log = "\n".join([
        "2026-11-27T13:07:15Z [info ] [DAG TEST] starting task_id=deliver map_index=3 [x]",
        "2026-11-27T13:07:16Z [error ] Task failed with exception [task]",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "c2b.store.run_meta.RunStateLost: run state lost for plan p, run r, shard 3: gone",
        "",
        "The above exception was the direct cause of the following exception:",
        "airflow.sdk.exceptions.AirflowFailException: run state lost for plan p, run r, shard 3: gone",
        "2026-11-27T13:07:17Z [info ] ::group::Post Execute",
    ])
    want = "deliver[3]: AirflowFailException: run state lost for plan p, run r, shard 3: gone"
    assert failed_task_errors(log) == [want]


@pytest.mark.timeout(240)
def test_demo_prints_the_failing_task_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 c2b_env: Path) -> None:
    """``c2b demo`` as a user runs it (its own process, task logs to a file): the failing task's
    error line on stderr, no traceback."""
    plans = tmp_path / "plans"
    plans.mkdir()
    data = yaml.safe_load((find_plan_file(ROOT / "dags" / "plans", "cancelled_price_coupon")).read_text())
    data["delivery"] = {**data.get("delivery", {}), "retries": 0}
    (plans / "cancelled_price_coupon.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("AIRFLOW_CONN_C2B_WAREHOUSE", f'{{"conn_type": "duckdb", "host": "{tmp_path / "none.duckdb"}"}}')
    code = ("import sys; from pathlib import Path; import c2b.cli as cli; "
            f"cli.PLANS_DIR = Path({str(plans)!r}); "
            "sys.exit(cli.main(['demo', '--plan', 'cancelled_price_coupon', '--dry-run']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "failed: extract_audience: FileNotFoundError: DuckDB warehouse" in proc.stderr, proc.stderr[-2000:]
