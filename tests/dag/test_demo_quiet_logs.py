"""A demo run's output holds no known noise: dag-factory's plugin warnings (it is a bench-only tool,
kept out of the venv), a per-run ``XCom not found`` error (report read the mapped stats one by one
until a 404), or pathspec's ``gitwildmatch`` deprecation (Airflow compiling plugins/.airflowignore)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NOISE = ("XCom not found", "gitwildmatch", "dagfactory", "dag-factory", "DagFactory")


def test_demo_run_output_has_no_known_noise(c2b_env: Path) -> None:
    # --verbose: Airflow's task logs go to the output instead of .airflow/c2b/demo.log.
    out = subprocess.run([str(Path(sys.executable).parent / "c2b"), "demo", "--verbose"],
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "-> complete" in out.stdout
    assert "[info" in text, "the task logs should be in the output (--verbose)"
    noisy = [line for line in text.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy[:10])
