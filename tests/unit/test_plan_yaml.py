"""What a plan file may not use of YAML: duplicate keys (the last one would win silently), anchors and
aliases (a few hundred bytes expand to gigabytes), merge keys, and size. Issue #11 defects 4 and 5."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from c2b.airflow.dag_factory import plan_files
from c2b.plan.errors import PlanError
from c2b.plan.load import _LOADER, MAX_PLAN_BYTES, load_plan, load_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = plan_files(ROOT / "dags" / "plans")

TRIAL = """\
id: trial
audience:
  segment: cancelled_for_reason.sql
  params: {reason: price_too_low, days: 30}
touches:
  - name: file_only_trial
    channel: outbox
    template: "Hi {{ nickname }}"
    channel: sms
"""

# Nine levels of nine aliases: 9**9 (387M) strings once expanded; about 600 bytes of YAML.
ALIAS_BOMB = "\n".join([
    "id: bomb",
    "audience:",
    "  segment: survey_answers.sql",
    "  params:",
    "    survey: why_sell",
    "    days: 30",
    '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"    a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)),
    "    answer: *a8",
    "touches:",
    "  - {name: t, channel: outbox, template: hi}",
    "",
])


def _plan_error(tmp_path: Path, text: str, name: str = "trial.yaml") -> PlanError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PlanError) as info:
        load_plan(path, check_files=False)
    return info.value


def test_a_duplicate_key_in_a_touch_names_both_lines(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, TRIAL)
    assert err.lines() == [f"{err.path}: touches[0].channel: duplicate key 'channel': first at line 7, again at "
                           "line 9; a key may appear once in a mapping: remove one (line 9)"]
    assert err.path.endswith("trial.yaml")


@pytest.mark.parametrize(("text", "field", "first", "again"), [
    ("id: a\nid: b\n", "id", 1, 2),
    ("audience:\n  params:\n    days: 1\n    days: 2\n", "audience.params.days", 3, 4),
    ("delivery: {shards: 4, shards: 8}\n", "delivery.shards", 1, 1),
    ("touches:\n  - name: a\n  - name: b\n    template: x\n    template: y\n", "touches[1].template", 4, 5),
    ("experiment:\n  variants:\n    a: {weight: 1}\n    a: {weight: 2}\n", "experiment.variants.a", 3, 4),
])
def test_duplicate_keys_are_refused_at_every_level(tmp_path: Path, text: str, field: str, first: int,
                                                   again: int) -> None:
    err = _plan_error(tmp_path, text)
    assert (field, f"duplicate key {field.rsplit('.', 1)[-1].split(']')[-1]!r}: first at line {first}, "
                   f"again at line {again}; a key may appear once in a mapping: remove one", again) in err.problems


def test_every_duplicate_is_reported_at_once(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, "id: a\nowner: x\nid: b\nowner: y\n")
    assert [p[0] for p in err.problems] == ["id", "owner"]


def test_an_alias_bomb_is_refused_quickly_and_in_little_memory(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 700
    tracemalloc.start()
    started = time.perf_counter()
    try:
        err = _plan_error(tmp_path, ALIAS_BOMB, "bomb.yaml")
    finally:
        took = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert took < 2.0 and peak < 5_000_000, (took, peak)
    assert "anchors and aliases (&name / *name) are not allowed" in str(err)
    where = [(p[0], p[2]) for p in err.problems]
    assert where == [("audience.params.a1[0]", 8), *((f"audience.params.a{i}[0]", 7 + i) for i in range(2, 9)),
                     ("audience.params.answer", 16)]


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, "delivery:\n  <<: {shards: 4}\n  page_size: 10\n")
    assert err.problems == [("delivery", "merge keys (<<) are not allowed in a plan file; write the keys out", 2)]


def test_a_file_over_the_size_bound_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    err = _plan_error(tmp_path, "id: big\ndescription: " + "x" * MAX_PLAN_BYTES + "\n")
    assert "larger than 256 KiB" in str(err)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_plain_plans_load_as_pyyaml_loads_them(path: Path) -> None:
    text = path.read_text()
    assert load_yaml(text) == yaml.load(text, Loader=_LOADER)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "42", "[1, 2]", "a: {b: [1, {c: d}]}\n",
                                  "d: 2026-01-01\nb: yes\nn: ~\n", "1: x\n'1': y\n"])
def test_small_documents_load_as_pyyaml_loads_them(text: str) -> None:
    assert load_yaml(text) == yaml.load(text, Loader=_LOADER)
