"""Plan YAML loads to exactly what PyYAML's safe loader gives, errors included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from c2b.plan.load import _LOADER, load_yaml
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

DOCS = [
    *(p.read_text() for p in sorted((ROOT / "dags" / "plans").glob("*.yaml"))),
    "", "# only a comment\n", "just text", "42", "[1, 2]", "a: 1\na: 2\n",
    "d: 2026-01-01\nt: 2026-01-01 10:00:00\nb: yes\nn: ~\nf: 1.5e3\no: 0o17\nx: 0x1F\ni: .inf\ns: '1'\n",
    "base: &b {x: 1}\nother: *b\n", "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",
    "s: !!set {a, b}\n", "o: !!omap [{a: 1}]\n", "bin: !!binary aGk=\n", "? [a, b]\n: c\n",
    "? {a: 1}\n: c\n", "1: int key\n2026-01-01: date key\nnull: none key\n", "k: !!str 12\n", "k: !!int '12'\n",
]
BAD = ["a: [1, 2\n", "a: !custom x\n", "d: 2026-13-45\n", "k: !!int x\n", "a: b: c\n", "\t- x\n"]


def _same(text: str) -> None:
    try:
        expected = ("ok", yaml.load(text, Loader=_LOADER))
    except Exception as exc:  # noqa: BLE001
        expected = ("error", type(exc), str(exc))
    try:
        got = ("ok", load_yaml(text))
    except Exception as exc:  # noqa: BLE001
        got = ("error", type(exc), str(exc))
    assert got == expected
    if got[0] == "ok":
        assert type(got[1]) is type(expected[1])


@pytest.mark.parametrize("text", DOCS + BAD)
def test_same_as_pyyaml(text: str) -> None:
    _same(text)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", ":", " ", "\n", "- ", "[", "]", "{", "}", ",", "&x ", "*x", "<<", "1", "yes",
                                 "2026-01-01", "'q'", '"', "!!str ", "!t ", "?", "#", "  ", "~", "-1.5"]),
                max_size=20).map("".join))
def test_same_as_pyyaml_on_fragments(text: str) -> None:
    _same(text)
