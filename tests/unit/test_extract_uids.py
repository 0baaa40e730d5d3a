"""Uid cleaning masks, de-duplication keys and the bounded key set, against plain-Python references."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from c2b.audience.uids import KeySet, first_occurrences, normalize_uids, uid_keys


def _masks(values, type=None):
    col = normalize_uids(pa.array(values, type))
    return col.null.tolist(), col.malformed.tolist(), col.text.to_pylist()


def test_integer_uids_are_text_and_never_malformed() -> None:
    null, bad, text = _masks([1, None, 3, -4, 2**62])
    assert null == [False, True, False, False, False]
    assert not any(bad)
    assert text == ["1", None, "3", "-4", str(2**62)]


def test_text_uids_malformed_rules() -> None:
    values = ["ok_1", None, "", " 12", "12 ", "a\tb", "a\x00b", "x" * 128, "x" * 129, "é" * 64, "é" * 65,
              "a\u3000b", "a\u200bb", "bad\ufffd", "用户", "0123", "del\x7f"]
    null, bad, text = _masks(values)
    assert null == [v is None for v in values]
    assert bad == [False, False, True, True, True, True, True, False, True, False, True,
                   True, True, True, False, False, True]
    assert text[0] == "ok_1" and text[2] is None and text[14] == "用户"


def test_float_uids() -> None:
    null, bad, text = _masks([1.0, float("nan"), 2.5, None, float("inf"), 1e30])
    assert null == [False, True, False, True, False, False]
    assert bad == [False, False, True, False, True, True]
    assert text[0] == "1"


def test_other_types_go_value_by_value() -> None:
    null, bad, text = _masks([Decimal("7.00"), Decimal("2.5"), None])
    assert (null, bad, text) == ([False, False, True], [False, True, False], ["7", None, None])
    # Bytes that are not UTF-8 (what a lone surrogate looks like on the wire) are malformed.
    null, bad, text = _masks([b"ab", b"\xed\xa0\x80", None, b""], pa.binary())
    assert (null, bad, text) == ([False, False, True, False], [False, True, False, True], ["ab", None, None, None])


def test_numeric_keys_are_exact_and_distinct_from_text_keys() -> None:
    keys = uid_keys(pa.array(["12", "012", "0", "abc", "12", "999999999999999999", "1000000000000000000"]))
    assert keys[0] == 12 and keys[2] == 0 and keys[5] == 999999999999999999
    assert keys[0] == keys[4]
    assert keys[1] >= 2**63 and keys[3] >= 2**63 and keys[6] >= 2**63  # fingerprints
    assert len(set(keys.tolist())) == 6
    # An integer column and its text give the same keys.
    assert uid_keys(normalize_uids(pa.array([12, 0])).text).tolist() == [12, 0]


def test_first_occurrences() -> None:
    keys = np.array([5, 3, 5, 1, 3, 3, 9], dtype=np.uint64)
    assert first_occurrences(keys).tolist() == [True, True, False, True, False, False, True]


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("space", [10, 1000, 10**6, 2**64 - 1])
def test_key_set_matches_a_python_set(ordered: bool, space: int) -> None:
    rng = np.random.default_rng(space % 1000 + ordered)
    keys = rng.integers(0, space, 30_000, dtype=np.uint64)
    if ordered:
        keys.sort()
    ks = KeySet()
    got = np.concatenate([ks.add_new(keys[i:i + 1999]) for i in range(0, len(keys), 1999)])
    seen: set[int] = set()
    expected = []
    for k in keys.tolist():
        expected.append(k not in seen)
        seen.add(k)
    assert got.tolist() == expected
    assert ks.size == len(seen)
    probe = rng.integers(0, space, 5000, dtype=np.uint64)
    assert ks.contains(probe).tolist() == [k in seen for k in probe.tolist()]


def test_key_set_in_key_order_is_never_merged() -> None:
    ks = KeySet()
    for start in range(0, 100_000, 10_000):
        assert ks.add_new(np.arange(start, start + 10_000, dtype=np.uint64)).all()
    assert ks.size == 100_000 and ks.nbytes == 800_000
