"""The vectorised murmur3 and variant assignment equal mmh3 / VariantPicker on every value."""

from __future__ import annotations

import random

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from c2b.audience.extract import VariantAssigner
from c2b.hashing import VariantPicker
from c2b.hashing_arrow import murmur3_32


def _values(n: int = 3000) -> list[str]:
    rnd = random.Random(7)
    alphabet = "ab1Z9é用😀 -_"
    fixed = ["", "a", "ab", "abc", "abcd", "abcde", "1234567890", "用户123", "😀", "x" * 300]
    return fixed + ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("prefix", [b"", b"s", b"ab:", b"salt:", b"cancelled-price-coupon-2026:", "盐:".encode()])
@pytest.mark.parametrize("seed", [0, 1, 0x9747B28C])
def test_murmur3_matches_mmh3(prefix: bytes, seed: int) -> None:
    values = _values()
    expected = [mmh3.hash(prefix + v.encode(), seed, signed=False) for v in values]
    assert murmur3_32(pa.array(values), seed, prefix).tolist() == expected
    assert murmur3_32(pa.array(values, pa.large_string()), seed, prefix).tolist() == expected
    assert murmur3_32(pa.array(values).slice(11, 500), seed, prefix).tolist() == expected[11:511]


def test_murmur3_one_length_fast_path_and_slices() -> None:
    values = [str(10**9 + i) for i in range(5000)]
    expected = [mmh3.hash(v.encode(), 0, signed=False) for v in values]
    arr = pa.array(values)
    assert murmur3_32(arr).tolist() == expected
    assert murmur3_32(arr.slice(123, 77)).tolist() == expected[123:200]
    assert murmur3_32(pa.array([], pa.string())).tolist() == []


def test_murmur3_signed_view_is_guava_as_int() -> None:
    values = ["", "1", "user_42", "😀"]
    signed = murmur3_32(pa.array(values)).view(np.int32).tolist()
    assert signed == [mmh3.hash(v.encode(), 0, signed=True) for v in values]


@pytest.mark.parametrize("weights", [{"a": 80, "control": 20}, {"x": 1}, {"b": 3, "a": 0, "c": 5, "z": 2}])
def test_variant_assigner_equals_variant_picker(weights: dict[str, int]) -> None:
    values = _values(5000)
    picker = VariantPicker("salt-1", weights)
    assigner = VariantAssigner("salt-1", weights)
    got = assigner.names.take(pa.array(assigner.assign(pa.array(values)))).to_pylist()
    assert got == picker.pick_many(v.encode() for v in values)
    assert "a" not in got or weights.get("a", 1) > 0
