"""Which Airflow processes import the engine before forking task processes (c2b/airflow/warm.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from c2b.airflow.warm import forks_tasks, warm


@pytest.mark.parametrize(("argv", "executor", "expected"), [
    (["airflow", "celery", "worker", "--celery-hostname", "w1@h"], "CeleryExecutor", True),
    (["airflow", "scheduler"], "LocalExecutor", True),
    (["airflow", "scheduler"], "CeleryExecutor", False),  # its tasks run on the workers
    (["airflow", "api-server", "--workers", "1"], "LocalExecutor", False),
    (["airflow", "dag-processor"], "LocalExecutor", False),
    (["airflow", "celery", "flower"], "CeleryExecutor", False),
])
def test_only_processes_that_fork_tasks_warm(argv: list[str], executor: str, expected: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    assert forks_tasks(argv) is expected


def test_warm_imports_the_task_modules_and_can_be_turned_off() -> None:
    code = ("import sys; from c2b.airflow.warm import warm; done = warm(); "
            "print(len(done), 'c2b.steps' in sys.modules, 'duckdb' in sys.modules)")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert on.stdout.split() == [on.stdout.split()[0], "True", "True"] and int(on.stdout.split()[0]) > 10
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "C2B_WARM_IMPORTS": "off"})
    assert off.stdout.split() == ["0", "False", "False"]
    assert warm(()) == []
