"""Pure parts of the store: vectorised hashing, shard balance, shard-count choice, packed encoding."""

from __future__ import annotations

import csv
from pathlib import Path

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from c2b.hashing import MAX_SHARDS, murmur3_32_arrow, shard_index, shard_indexes_arrow
from c2b.store import packed
from c2b.store.sizing import ShardCountError, choose_shard_count, shard_sizes, smallest_fitting
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VECTORS = Path(__file__).parents[1] / "data" / "guava_murmur3_shard_vectors.tsv"


def _histogram(uids: pa.Array) -> np.ndarray:
    buckets = np.abs(murmur3_32_arrow(uids).astype(np.int64)) & (MAX_SHARDS - 1)
    return np.bincount(buckets, minlength=MAX_SHARDS)


def test_vectorised_hash_matches_guava_vectors() -> None:
    with VECTORS.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    # Arrow cannot hold a lone surrogate; those rows are covered by the scalar tests.
    rows = [r for r in rows if not any(0xD800 <= ord(c) <= 0xDFFF for c in r["member"])]
    arr = pa.array([r["member"] for r in rows], pa.string())
    assert murmur3_32_arrow(arr).tolist() == [int(r["murmur3_32_asInt"]) for r in rows]
    for n in (1, 2, 16, 64, 128, 1024):
        assert shard_indexes_arrow(arr, n).tolist() == [int(r[f"idx_{n}"]) for r in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=60),
       st.integers(0, 5))
def test_vectorised_hash_equals_mmh3(strings: list[str], offset: int) -> None:
    arr = pa.array(["pad"] * offset + strings, pa.string()).slice(offset)
    expected = [mmh3.hash(s.encode("utf-8"), 0, signed=True) for s in strings]
    assert murmur3_32_arrow(arr).tolist() == expected
    assert shard_indexes_arrow(arr, 64).tolist() == [shard_index(s, 64) for s in strings]


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(["int", "prefixed", "sparse"]), st.integers(0, 10**12))
def test_shards_are_balanced_at_1m_uids_64_shards(kind: str, start: int) -> None:
    n = 1_000_000
    if kind == "int":
        uids = pa.array(np.arange(start, start + n).astype(str), pa.string())
    elif kind == "prefixed":
        uids = pa.array(np.char.add("u-", np.arange(start, start + n).astype(str)), pa.string())
    else:
        uids = pa.array((np.arange(n, dtype=np.int64) * 7919 + start).astype(str), pa.string())
    sizes = np.bincount(shard_indexes_arrow(uids, 64), minlength=65)[1:]
    assert sizes.sum() == n
    assert sizes.max() / sizes.mean() <= 1.05, sizes.max() / sizes.mean()


def test_histogram_gives_exact_sizes_for_every_count() -> None:
    uids = pa.array([f"user{i}" for i in range(50_000)])
    hist = _histogram(uids)
    for n in (1, 2, 8, 64, 1024):
        direct = np.bincount(shard_indexes_arrow(uids, n), minlength=n + 1)[1:].tolist()
        assert shard_sizes(hist, n) == direct


def test_too_small_shard_count_is_refused_with_the_count_to_use() -> None:
    hist = _histogram(pa.array([str(i) for i in range(100_000)]))
    fits = smallest_fitting(hist, 10_000)
    assert fits == 16 and max(shard_sizes(hist, 8)) > 10_000
    with pytest.raises(ShardCountError, match=r"delivery.shards: 8 would put .* use shards: 16 \(or shards: auto\)"):
        choose_shard_count(hist, 8, 10_000)
    assert choose_shard_count(hist, 32, 10_000) == 32
    assert choose_shard_count(hist, "auto", 10_000) == 16
    assert choose_shard_count(hist, "auto", 100_000) == 1


def test_more_than_1024_shards_is_refused() -> None:
    hist = _histogram(pa.array([str(i) for i in range(20_000)]))
    with pytest.raises(ShardCountError, match="Raise delivery.max_shard_members to at least"):
        choose_shard_count(hist, "auto", 5)


@pytest.mark.parametrize(("uids", "ints"), [
    (["1", "-5", "0", "9223372036854775807", "-9223372036854775808"], True),
    (["1", "007"], False), (["-0"], False), (["+3"], False), (["9223372036854775808"], False),
    (["1.0"], False), (["u1"], False), ([" 4"], False), ([], True),
])
def test_only_canonical_integers_are_packed(uids: list[str], ints: bool) -> None:
    values = packed.canonical_ints(pa.array(uids, pa.string()))
    assert (values is not None) == ints
    if ints:
        raw = packed.pack(values)
        assert len(raw) == packed.WIDTH * len(uids)
        assert packed.unpack(raw) == uids
    else:
        assert packed.first_non_canonical(pa.array(uids, pa.string())) is not None


def test_packed_byte_range_pages_by_position() -> None:
    raw = packed.pack(np.arange(10, 20, dtype=np.int64))
    first, last = packed.byte_range(3, 4)
    assert packed.unpack(raw[first:last + 1]) == ["13", "14", "15", "16"]
