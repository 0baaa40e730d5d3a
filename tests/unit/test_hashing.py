"""Shard indexes must equal the Java (Guava) implementation for every reference row."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from c2b.hashing import VariantPicker, check_shard_count, murmur3_32, shard_index, shard_indexes, uid_bytes

VECTORS = Path(__file__).parents[1] / "data" / "guava_murmur3_shard_vectors.tsv"
SIZES = (1, 2, 16, 64, 128, 1024)


def _rows() -> list[dict[str, str]]:
    with VECTORS.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_vectors_file_is_complete() -> None:
    rows = _rows()
    assert len(rows) == 55
    assert any(r["member"] == "" for r in rows), "the empty-string vector is part of the contract"


@pytest.mark.parametrize("row", _rows(), ids=lambda r: repr(r["member"])[:24])
def test_matches_guava(row: dict[str, str]) -> None:
    member = row["member"]
    assert murmur3_32(uid_bytes(member)) == int(row["murmur3_32_asInt"])
    for n in SIZES:
        assert shard_index(member, n) == int(row[f"idx_{n}"]), f"N={n}"
    assert shard_indexes([uid_bytes(member)], 1024) == [int(row["idx_1024"])]


def test_abs_is_applied_before_the_mask() -> None:
    # A negative hash whose low bits differ between abs(h) & m and h & m.
    rows = [r for r in _rows() if int(r["murmur3_32_asInt"]) < 0]
    h = int(rows[0]["murmur3_32_asInt"])
    assert (abs(h) & 1023) + 1 == int(rows[0]["idx_1024"])
    assert any((int(r["murmur3_32_asInt"]) & 1023) + 1 != int(r["idx_1024"]) for r in rows)


def test_lone_surrogate_is_hashed_not_crashing() -> None:
    # mmh3 segfaults on such a str; we hash its replaced UTF-8 bytes instead.
    assert 1 <= shard_index("a\ud800z", 64) <= 64
    assert uid_bytes("a\ud800z") == b"a?z"


@pytest.mark.parametrize("bad", [0, 3, 12, 2048, -4])
def test_shard_count_must_be_power_of_two(bad: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_shard_count(bad)


def test_variant_assignment_is_deterministic_and_weighted() -> None:
    picker = VariantPicker("salt-1", {"a": 80, "control": 20})
    uids = [str(i).encode() for i in range(20_000)]
    first = picker.pick_many(uids)
    assert first == VariantPicker("salt-1", {"control": 20, "a": 80}).pick_many(uids)
    share = Counter(first)["a"] / len(uids)
    assert 0.78 < share < 0.82
    other = VariantPicker("salt-2", {"a": 80, "control": 20}).pick_many(uids)
    assert other != first, "a new salt reshuffles users"
