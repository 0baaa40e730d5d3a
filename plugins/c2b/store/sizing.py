"""Choose a run's shard count from the exact shard sizes, so that no shard key becomes a big key.

The loader hashes every uid once into ``abs(murmur3_32) & 1023`` (a 1024-bucket histogram) before
it writes anything. Because every shard count is a power of two up to 1024, shard ``i`` of ``n``
shards is exactly the union of the buckets ``b`` with ``b & (n - 1) == i - 1``: the histogram gives
the true size of every shard for every allowed count, without hashing again. So the loader can
refuse a count that would put more than ``max_shard_members`` users in one key *before* it writes,
and name the smallest count that fits.
"""

from __future__ import annotations

from typing import Any

from c2b.hashing import MAX_SHARDS, check_shard_count


class ShardCountError(ValueError):
    """The requested shard count would exceed the members-per-key bound; the message says what to use."""


def shard_sizes(histogram: Any, shards: int) -> list[int]:
    """Return the members of shard 1..``shards`` from the 1024-bucket histogram."""
    import numpy as np

    check_shard_count(shards)
    hist = np.asarray(histogram, dtype=np.int64)
    if hist.shape != (MAX_SHARDS,):
        raise ValueError(f"histogram must have {MAX_SHARDS} buckets, got {hist.shape}")
    return [int(x) for x in hist.reshape(MAX_SHARDS // shards, shards).sum(axis=0)]


def smallest_fitting(histogram: Any, max_members: int) -> int | None:
    """Return the smallest power-of-two shard count whose largest shard holds <= ``max_members``."""
    n = 1
    while n <= MAX_SHARDS:
        if max(shard_sizes(histogram, n)) <= max_members:
            return n
        n *= 2
    return None


def choose_shard_count(histogram: Any, requested: int | str, max_members: int) -> int:
    """Return the shard count to load with, or raise :class:`ShardCountError` saying which to use.

    ``requested`` is the plan's ``delivery.shards``: a power of two, or ``"auto"`` for the smallest
    power of two that keeps every shard within ``max_members`` (``delivery.max_shard_members``).
    """
    if max_members < 1:
        raise ShardCountError(f"delivery.max_shard_members must be at least 1, got {max_members}")
    fits = smallest_fitting(histogram, max_members)
    total = int(sum(int(x) for x in histogram))
    if fits is None:
        biggest = max(shard_sizes(histogram, MAX_SHARDS))
        raise ShardCountError(
            f"{total:,} users do not fit in {MAX_SHARDS} shards (the most Airflow can map) of at most "
            f"{max_members:,} members: the largest would hold {biggest:,}. Raise "
            f"delivery.max_shard_members to at least {biggest:,} or narrow the segment.")
    if requested == "auto":
        return fits
    n = check_shard_count(int(requested))
    sizes = shard_sizes(histogram, n)
    largest = max(sizes)
    if largest > max_members:
        raise ShardCountError(
            f"delivery.shards: {n} would put {largest:,} users in shard {sizes.index(largest) + 1}, above "
            f"delivery.max_shard_members ({max_members:,}) for {total:,} users; use shards: {fits} "
            f"(or shards: auto)")
    return n
