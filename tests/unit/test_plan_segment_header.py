"""Plans are checked against what their segment files declare in header comments."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pytest
import yaml
from c2b.plan.checks import ParamSpec, parse_header, read_segment
from c2b.plan.errors import PlanError
from c2b.plan.load import parse_plan

from devtools.plan_samples import base_plan, mutate

FILE = "dags/plans/sample_plan.yaml"
GOOD_SQL = """-- Test segment.
-- params: reason (text: a, b), days (integer), min_price (numeric), since (date)
-- columns: uid, nickname, city
SELECT uid, nickname, city FROM users WHERE reason = :reason AND d > :days AND p >= :min_price AND s > :since
"""


@pytest.fixture
def segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private segment library (C2B_SQL_DIR) holding test.sql."""
    folder = tmp_path / "sql" / "segments"
    folder.mkdir(parents=True)
    (folder / "test.sql").write_text(GOOD_SQL)
    monkeypatch.setenv("C2B_SQL_DIR", str(tmp_path / "sql"))
    return folder


def plan_on(segment: str = "test.sql", **params: object) -> dict:
    data = mutate(base_plan(), "audience", {"segment": segment, "params": params or {
        "reason": "a", "days": 3, "min_price": 9.5, "since": "2026-01-01"}})
    for i in range(2):
        data["touches"][i]["template"] = "{{ nickname }} {{ city }}"
    return data


def errors(data: dict) -> list[str]:
    try:
        parse_plan(data, FILE, text=yaml.safe_dump(data), check_files=True)
    except PlanError as exc:
        return str(exc).splitlines()
    return []


def test_header_is_parsed() -> None:
    spec = parse_header(GOOD_SQL, "test.sql")
    assert spec.columns == ("uid", "nickname", "city")
    assert spec.params == {"reason": ParamSpec("reason", "text", ("a", "b")), "days": ParamSpec("days", "integer"),
                           "min_price": ParamSpec("min_price", "numeric"), "since": ParamSpec("since", "date")}
    assert spec.placeholders == {"reason", "days", "min_price", "since"}
    assert parse_header("-- params: none\n-- columns: uid\nSELECT 1 AS uid").params == {}
    assert parse_header("-- params: (none)\n-- columns: uid\nSELECT 1 AS uid").params == {}
    noted = parse_header("-- params: n (integer, 0-10), p (numeric, CNY)\nSELECT :n, :p").params
    assert noted == {"n": ParamSpec("n", "integer", note="0-10"), "p": ParamSpec("p", "numeric", note="CNY")}
    assert noted["n"].check(11) == "must be from 0 to 10 (declared n (integer, 0-10))"
    assert noted["n"].check(10) is None and noted["p"].check(3000) is None
    assert parse_header("SELECT 1 AS uid").params is None


def test_good_segment_plan_validates(segments: Path) -> None:
    assert errors(plan_on()) == []


@pytest.mark.parametrize(("name", "good", "bad", "text"), [
    ("integer", 3, True, "whole number"),
    ("integer", 0, 2.5, "whole number"),
    ("min_price", 10, "10", "a number"),
    ("min_price", 9.99, False, "a number"),
    ("since", date(2026, 1, 2), "yesterday", "a date"),
    ("reason", "b", "c", "use one of: a, b"),
])
def test_param_types(segments: Path, name: str, good: object, bad: object, text: str) -> None:
    key = "days" if name == "integer" else name
    params = {"reason": "a", "days": 3, "min_price": 9.5, "since": "2026-01-01"}
    assert errors(plan_on(**{**params, key: good})) == []
    lines = errors(plan_on(**{**params, key: bad}))
    assert any(ln.startswith(f"{FILE}: audience.params.{key}: ") and text in ln for ln in lines), lines


def test_declared_params_must_match_placeholders(segments: Path) -> None:
    (segments / "test.sql").write_text(GOOD_SQL.replace("(date)", "(date), extra (integer)"))
    lines = errors(plan_on())
    assert any("audience.segment: test.sql declares params :days, :extra" in ln and "fix its '-- params:' header" in ln
               for ln in lines), lines


def test_placeholders_need_a_params_header(segments: Path) -> None:
    (segments / "test.sql").write_text("\n".join(ln for ln in GOOD_SQL.splitlines() if "params:" not in ln))
    lines = errors(plan_on())
    assert any("audience.segment: test.sql uses :days" in ln and "no '-- params:'" in ln for ln in lines), lines


def test_templates_need_a_columns_header(segments: Path) -> None:
    (segments / "test.sql").write_text("\n".join(ln for ln in GOOD_SQL.splitlines() if "columns:" not in ln))
    assert any("audience.segment: test.sql has no '-- columns:' header" in ln for ln in errors(plan_on()))


def test_a_segment_returns_uid(segments: Path) -> None:
    (segments / "test.sql").write_text(GOOD_SQL.replace("columns: uid,", "columns:"))
    assert any("must return a uid column" in ln for ln in errors(plan_on()))


def test_segment_outside_the_library_is_refused(segments: Path) -> None:
    assert any("audience.segment:" in ln for ln in errors(plan_on("../segments/test.sql")))


def test_header_cache_follows_file_changes(segments: Path) -> None:
    path = segments / "test.sql"
    assert read_segment("test.sql").columns == ("uid", "nickname", "city")
    path.write_text(GOOD_SQL.replace("uid, nickname, city", "uid, nickname"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert read_segment("test.sql").columns == ("uid", "nickname")


def test_repository_segments_declare_their_interface() -> None:
    """Every segment in the library has params and columns headers that match its SQL."""
    folder = Path(__file__).resolve().parents[2] / "include" / "sql" / "segments"
    for path in sorted(folder.glob("*.sql")):
        spec = parse_header(path.read_text(), path.name)
        assert spec.columns and "uid" in spec.columns, path.name
        assert spec.params is not None and set(spec.params) == spec.placeholders, path.name
