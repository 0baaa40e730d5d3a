"""`c2b demo` refuses to sit silent when the plan's send window is closed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from c2b import cli

ROOT = Path(__file__).resolve().parents[2]


def _plan_with_window(folder: Path, window: dict | None) -> str:
    plan = yaml.safe_load((ROOT / "dags" / "plans" / "growth" / "cancelled_price_coupon.yaml").read_text())
    if window is not None:
        plan["window"] = window
    (folder / "cancelled_price_coupon.yaml").write_text(yaml.safe_dump(plan))
    return plan["id"]


def test_closed_window_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "PLANS_DIR", tmp_path)
    plan_id = _plan_with_window(tmp_path, {"start": "2026-01-01", "end": "2026-01-02"})
    why = cli._closed_now(plan_id)
    assert "has closed for good" in why and "--dry-run" in why


def test_plan_without_window_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "PLANS_DIR", tmp_path)
    assert cli._closed_now(_plan_with_window(tmp_path, None)) == ""
