"""Shard and variant assignment by murmur3, byte-for-byte compatible with the Java side.

The original platform placed a user in shard ``(abs(murmur3_32(uid)) & (N - 1)) + 1`` with Guava's
``Hashing.murmur3_32()`` (seed 0, hash of the UTF-8 bytes, read as a signed int). Both sides of a
mixed fleet must agree on where a user lives, so this module reproduces that formula exactly,
including ``abs`` before the mask (for negative hashes it changes which bits survive).

Guava note: the deprecated ``murmur3_32()`` differs from hashing the UTF-8 bytes only for strings with
characters outside the Basic Multilingual Plane (never for numeric uids); ``murmur3_32_fixed()``
matches this module for every string.

We always hash *bytes*: mmh3 5.3.1 crashes the whole process when handed a ``str`` holding a lone
surrogate, so text is encoded with ``errors="replace"`` first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import mmh3

MAX_SHARDS = 1024  # Airflow's [core] max_map_length: one mapped task per shard.
VECTOR_MIN = 64  # a page of fewer uids picks variants one by one (numpy's fixed cost is more)


def uid_bytes(uid: object) -> bytes:
    """Return the UTF-8 bytes a uid is hashed as (lone surrogates replaced, never crashing)."""
    if isinstance(uid, bytes):
        return uid
    return str(uid).encode("utf-8", "replace")


def murmur3_32(data: bytes) -> int:
    """Return Guava's ``murmur3_32().hashBytes(data).asInt()``: seed 0, signed 32-bit."""
    return mmh3.hash(data, 0, signed=True)


def check_shard_count(n: int) -> int:
    """Return ``n`` if it is a power of two in 1..MAX_SHARDS, else raise ``ValueError``."""
    if n < 1 or n > MAX_SHARDS or n & (n - 1):
        raise ValueError(f"shard count must be a power of two between 1 and {MAX_SHARDS}, got {n}")
    return n


def shard_index(uid: object, shards: int) -> int:
    """Return the 1-based shard of ``uid``: ``(abs(murmur3_32(utf8(uid))) & (shards - 1)) + 1``."""
    return (abs(murmur3_32(uid_bytes(uid))) & (shards - 1)) + 1


def shard_indexes(uids: Iterable[bytes], shards: int) -> list[int]:
    """Return the shard of every uid (already bytes), the hot loop of the loader."""
    mask = shards - 1
    h = mmh3.hash
    return [(abs(h(u, 0, True)) & mask) + 1 for u in uids]


class VariantPicker:
    """Assign users to A/B variants deterministically from ``(salt, uid)``.

    The bucket is ``murmur3_32(salt + ":" + uid) mod total_weight`` (unsigned), so the same user
    always lands in the same variant of a plan, on every run and every machine, while a new salt
    reshuffles the population for a new experiment. Weights are integers.
    """

    def __init__(self, salt: str, weights: Mapping[str, int]) -> None:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("variant weights must be non-negative with a positive sum")
        self._prefix = salt.encode("utf-8", "replace") + b":"
        self._total = sum(weights.values())
        # Cumulative upper bounds in a stable (sorted by name) order, so reordering the YAML
        # does not reassign anyone.
        self._bounds: list[tuple[int, str]] = []
        acc = 0
        for name in sorted(weights):
            acc += weights[name]
            if weights[name]:
                self._bounds.append((acc, name))
        self._upper: Any = None  # the bounds and names as numpy arrays, for pick_page
        self._names: Any = None
        if len(self._bounds) > 1:
            import numpy as np

            self._upper = np.array([b for b, _ in self._bounds], dtype=np.int64)
            self._names = np.array([n for _, n in self._bounds], dtype=object)

    def pick(self, uid: bytes) -> str:
        """Return the variant of one uid (given as bytes)."""
        if len(self._bounds) == 1:  # one variant with weight: its bound is the total, above every bucket
            return self._bounds[0][1]
        bucket = mmh3.hash(self._prefix + uid, 0, False) % self._total
        for bound, name in self._bounds:
            if bucket < bound:
                return name
        raise AssertionError("unreachable: bucket below total weight")

    def pick_many(self, uids: Iterable[bytes]) -> list[str]:
        """Return the variant of every uid."""
        return [self.pick(u) for u in uids]

    def pick_page(self, uids: Sequence[str]) -> list[str]:
        """Return the variant of every uid of a page (given as text), the same as :meth:`pick` of
        its UTF-8 bytes: without hashing when one variant has all the weight, in numpy
        (:mod:`c2b.hashing_arrow`) for a page of more than :data:`VECTOR_MIN` uids."""
        if len(self._bounds) == 1:
            return [self._bounds[0][1]] * len(uids)
        if len(uids) < VECTOR_MIN:
            return [self.pick(u.encode("utf-8", "replace")) for u in uids]
        import numpy as np
        import pyarrow as pa

        from c2b import hashing_arrow

        try:
            values = pa.array(uids, type=pa.string())  # UTF-8, as encode() gives for valid text
        except (pa.ArrowException, UnicodeError):  # a lone surrogate: encode() replaces it
            values = pa.array([u.encode("utf-8", "replace") for u in uids], type=pa.binary())
        buckets = hashing_arrow.murmur3_32(values, 0, self._prefix).astype(np.int64) % self._total
        return self._names[np.searchsorted(self._upper, buckets, side="right")].tolist()  # type: ignore[no-any-return]


# -- vectorised: the loader's hot path -----------------------------------------------------------
# mmh3 costs ~1 µs per uid once Python's loop is counted, which alone would cap the loader at about
# the server's own ZADD ingest rate. The same murmur3_32 written as numpy array arithmetic hashes
# a whole Arrow batch at a time (c2b.hashing_arrow: uids grouped by byte length, one column of 4-byte
# blocks per step), several times faster; tests check it against mmh3 and the Guava vectors.

def string_groups(uids: Any) -> Iterator[tuple[Any, int, Any]]:
    """Yield ``(rows, length, bytes)`` per distinct byte length of an Arrow string array.

    ``rows`` are the positions (numpy int64) of the strings of that length and ``bytes`` their
    UTF-8 bytes as an ``(len(rows), length)`` uint8 matrix: the shape numpy arithmetic needs, for
    hashing and for writing RESP. Nulls count as empty strings (extract never stages them).
    """
    import numpy as np
    import pyarrow as pa

    if isinstance(uids, pa.ChunkedArray):
        uids = uids.combine_chunks()
    if pa.types.is_large_string(uids.type) or pa.types.is_large_binary(uids.type):
        uids = uids.cast(pa.string() if pa.types.is_large_string(uids.type) else pa.binary())
    n = len(uids)
    if n == 0:
        return
    offsets = np.frombuffer(uids.buffers()[1], dtype=np.int32, count=n + 1, offset=uids.offset * 4)
    data_buf = uids.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if uids.null_count:
        lengths = np.where(np.asarray(uids.is_valid()), lengths, 0)
    if lengths.min() == lengths.max():  # one length (typical of numeric ids): a reshape, no gather
        length = int(lengths[0])
        yield np.arange(n), length, data[offsets[0]:offsets[0] + n * length].reshape(n, length)
        return
    order = np.argsort(lengths, kind="stable")
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for rows in np.split(order, bounds):
        length = int(lengths[rows[0]])
        if length:
            mat = data[offsets[rows][:, None] + np.arange(length, dtype=np.int32)]
        else:
            mat = np.zeros((len(rows), 0), dtype=np.uint8)
        yield rows, length, mat


def murmur3_32_matrix(mat: Any) -> Any:
    """Return ``murmur3_32`` (signed, numpy int32) of every row of a uint8 matrix of equal-length strings."""
    from c2b import hashing_arrow

    return hashing_arrow.murmur3_32_matrix(mat)


def murmur3_32_arrow(uids: Any) -> Any:
    """Return Guava's ``murmur3_32`` of every string of an Arrow string array, as numpy int32.

    Equal to ``murmur3_32(s.encode("utf-8"))`` row by row (Arrow strings are UTF-8 already).
    """
    from c2b import hashing_arrow

    return hashing_arrow.murmur3_32(uids).view("int32")


def shard_of_hashes(hashes: Any, shards: int) -> Any:
    """Apply the seed's formula ``(abs(h) & (shards - 1)) + 1`` to numpy int32 hashes."""
    import numpy as np

    return (np.abs(hashes.astype(np.int64)) & (shards - 1)).astype(np.int32) + 1


def shard_indexes_arrow(uids: Any, shards: int) -> Any:
    """Return the 1-based shard of every uid of an Arrow string array (numpy int32)."""
    return shard_of_hashes(murmur3_32_arrow(uids), shards)
