"""The example plans are documentation that runs: each previews a real audience on the demo warehouse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from c2b.airflow.dag_factory import plan_files
from c2b.cli import main
from c2b.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
PLANS = plan_files(ROOT / "dags" / "plans")


@pytest.mark.parametrize("plan_file", PLANS, ids=lambda p: p.stem)
def test_example_plan_previews_an_audience(plan_file: Path, demo_warehouse: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", plan_file.stem, "--warehouse", str(demo_warehouse)]) == 0
    out = capsys.readouterr().out
    plan = load_plan(plan_file)
    for variant in plan.variant_weights:
        m = re.search(rf"^  {variant}\s+([\d,]+)\s", out, re.MULTILINE)
        assert m, out
        touched = bool(plan.touches_of(variant))
        assert int(m.group(1).replace(",", "")) > 0 or not touched, f"{variant} has no users:\n{out}"
    assert "nothing loaded to Redis, nothing sent" in out


def test_preview_reports_an_invalid_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad_plan.yaml"
    bad.write_text("id: bad_plan\naudience: {all: true}\ntouches: [{name: t, channel: fax, template: hi}]\n")
    assert main(["preview", str(bad), "--warehouse", str(tmp_path / "none.duckdb")]) == 1
    assert "bad_plan.yaml: touches[0].channel: 'fax' is not allowed" in capsys.readouterr().err


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert f"{len(PLANS)} plan(s) valid, 0 with errors" in capsys.readouterr().err
    (tmp_path / "bad_plan.yaml").write_text("id: bad_plan\naudience: {all: true}\ntouches: []\n")
    assert main(["validate", str(tmp_path), str(PLANS[0])]) == 1
    out, err = capsys.readouterr()
    assert "bad_plan.yaml: touches: must have at least 1 item(s) (line 3)" in out
    assert "1 plan(s) valid, 1 with errors" in err
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2  # no plan files: a usage error
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: cannot read the file" in capsys.readouterr().out


def test_schema_command_accepts_every_example(tmp_path: Path) -> None:
    import json

    import jsonschema
    import yaml

    out = tmp_path / "plan.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in PLANS:  # dates as YAML gives them are strings in JSON
        jsonschema.validate(json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str)), schema)
