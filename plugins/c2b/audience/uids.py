"""Uid cleaning and de-duplication over whole Arrow batches.

A segment may return its ``uid`` as an integer, a float, text or bytes; some rows are null, some are
garbage. :func:`normalize_uids` turns any of these into one Arrow string column plus exact masks of
the null and the malformed rows, without a per-row Python loop for the common types.

De-duplication needs memory for every uid already seen, so the structure is kept compact: each uid
maps to a 64-bit key (:func:`uid_keys`) held in sorted numpy runs (:class:`KeySet`), 8 bytes per
distinct uid instead of ~100 for a Python ``set`` of ``str``. Canonical decimal uids (the usual
case) map to their own value, so their de-duplication is exact. Any other uid maps to a 63-bit
fingerprint of its UTF-8 bytes; two different such uids would be merged with a probability of about
n^2 / 2^64 (5e-6 for 10M non-numeric uids).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from c2b.hashing_arrow import murmur3_32, string_buffers

MAX_UID_BYTES = 128
# Separators, control and format characters, and U+FFFD (what an undecodable byte becomes).
_BAD_CHARS = r"[\p{Z}\p{Cc}\p{Cf}\x{FFFD}]"
_NUMERIC_MAX = 10**18  # canonical decimals below this fit an int64 and are their own key
_FINGERPRINT_BIT = np.uint64(1 << 63)
_SEEDS = (0x9747B28C, 0x5BD1E995)


@dataclass
class UidColumn:
    """A batch's uids as text, with the rows that have none (null) or a bad one (malformed)."""

    text: pa.Array  # string; null where null or malformed
    null: np.ndarray  # bool per row
    malformed: np.ndarray  # bool per row
    ints: np.ndarray | None = None  # int64 per row when the uids came as integers (nulls as 0)

    @property
    def valid(self) -> np.ndarray:
        return ~(self.null | self.malformed)

    def keys(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Return the de-duplication keys (:func:`uid_keys`) of ``rows`` (default: all), valid rows only.

        Integer uids are their own key without a round trip through text.
        """
        if self.ints is not None:
            ints = self.ints if rows is None else self.ints[rows]
            if bool(((ints >= 0) & (ints < _NUMERIC_MAX)).all()):
                return ints.astype(np.uint64)
        return uid_keys(self.text if rows is None else self.text.take(pa.array(rows)))


def _bool(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Return an Arrow boolean array as numpy, nulls counting as false."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _bad_text(text: pa.Array) -> np.ndarray:
    """Return which (non-null) strings are malformed: empty, too long, or holding bad characters."""
    length = pc.binary_length(text).to_numpy(zero_copy_only=False)
    bad = (length == 0) | (length > MAX_UID_BYTES)
    if pc.all(pc.string_is_ascii(text)).as_py() is not False:
        # ASCII only: the bad characters are the bytes 0x00-0x20 and 0x7f; find them in the data
        # buffer directly and map each back to its row.
        offsets, data = string_buffers(text)
        hit = np.flatnonzero((data[offsets[0]:offsets[-1]] <= 0x20) | (data[offsets[0]:offsets[-1]] == 0x7F))
        if len(hit):
            bad[np.searchsorted(offsets, hit + offsets[0], side="right") - 1] = True
    else:
        bad |= _bool(pc.match_substring_regex(text, _BAD_CHARS))
    return bad


def _python_uid(value: object) -> str | None:
    """Return a uid of an unusual type as text (None when malformed): decimals, bytes, others."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            return None
        value = int(value)
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: never hand it to Arrow or mmh3
        return None
    return text


def uid_text(value: object) -> str | None:
    """Return a driver's uid value as text for an Arrow string column: None for a null (or NaN), and
    U+FFFD (which :func:`normalize_uids` counts as malformed) for a value that is no valid uid."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = _python_uid(value)
    return "\ufffd" if text is None else text


def normalize_uids(col: pa.Array | pa.ChunkedArray) -> UidColumn:
    """Return the uids of a batch as text with exact null and malformed masks.

    Integers become their decimal text; floats are accepted when integral (``42.0`` -> ``"42"``),
    a NaN counts as null; text is malformed when empty, longer than 128 UTF-8 bytes, or holding
    whitespace, control or format characters, or U+FFFD; other types are converted value by value.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    n = len(col)
    null = _bool(pc.is_null(col, nan_is_null=True)) if pa.types.is_floating(t) else _bool(pc.is_null(col))
    malformed = np.zeros(n, dtype=bool)
    ints = None
    if pa.types.is_integer(t):
        text = pc.cast(col, pa.string())
        ints = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False) \
            if not pa.types.is_uint64(t) else None
    elif pa.types.is_floating(t):
        values = col.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            integral = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2**63)
        malformed = ~null & ~integral
        ints = np.where(integral, values, 0).astype(np.int64)
        text = pc.cast(pa.array(ints, mask=~integral), pa.string())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.cast(pa.string()) if pa.types.is_large_string(t) else col
        malformed = ~null & _bad_text(text)
    else:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            try:
                return normalize_uids(col.cast(pa.string()))
            except pa.ArrowInvalid:  # some values are not UTF-8: sort them out one by one
                pass
        converted = [None if v is None else _python_uid(v) for v in col.to_pylist()]
        text = pa.array(converted, pa.string())
        malformed = ~null & _bool(pc.is_null(text))
        if (~malformed & ~null).any():
            malformed |= ~null & ~malformed & _bad_text(pc.fill_null(text, "x"))
    bad = null | malformed
    if bad.any():
        text = pc.if_else(pa.array(bad), pa.nulls(n, pa.string()), text)
    return UidColumn(text, null, malformed, ints)


def uid_keys(text: pa.Array) -> np.ndarray:
    """Return the 64-bit de-duplication key of every (valid) uid text, as ``uint64``.

    A canonical decimal below 10^18 (no sign, no leading zero) is its own value; any other uid is
    ``2^63 | fingerprint``, so the two kinds never collide.
    """
    n = len(text)
    keys = np.empty(n, dtype=np.uint64)
    if n == 0:
        return keys
    length = pc.binary_length(text).to_numpy(zero_copy_only=False)
    numeric = (_bool(pc.utf8_is_digit(text)) & _bool(pc.string_is_ascii(text))
               & (length <= 18) & (length > 0) & ((length == 1) | ~_bool(pc.starts_with(text, "0"))))
    if numeric.all():
        return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64)
    if numeric.any():
        idx = np.flatnonzero(numeric)
        keys[idx] = pc.cast(text.take(pa.array(idx)), pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64)
    other = np.flatnonzero(~numeric)
    rest = text.take(pa.array(other)) if len(other) < n else text
    hi = murmur3_32(rest, _SEEDS[0]).astype(np.uint64)
    lo = murmur3_32(rest, _SEEDS[1]).astype(np.uint64)
    keys[other] = (hi << np.uint64(32)) | lo | _FINGERPRINT_BIT
    return keys


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Return a mask of the rows whose key did not occur earlier in ``keys``."""
    n = len(keys)
    if _increasing(keys):
        return np.ones(n, dtype=bool)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    first_sorted = np.ones(n, dtype=bool)
    first_sorted[1:] = ordered[1:] != ordered[:-1]
    first = np.empty(n, dtype=bool)
    first[order] = first_sorted
    return first


class KeySet:
    """A set of uint64 keys kept as a few sorted numpy runs (8 bytes per key).

    Adding a batch appends a sorted run; runs of similar size whose ranges overlap are merged, so a
    lookup searches O(log n) runs. A segment that arrives in key order (``ORDER BY uid``) costs one
    comparison per row: its runs never overlap and are skipped by range. For keys in any other order
    a one-byte-per-slot filter (64 MiB, allocated on first need) answers "certainly new" for most
    keys before any binary search.
    """

    FILTER_BITS = 26

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._filter: np.ndarray | None = None
        self.size = 0

    @classmethod
    def from_keys(cls, chunks: Iterable[np.ndarray]) -> KeySet:
        ks = cls()
        for keys in chunks:
            ks.add(keys)
        return ks

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._runs) + (self._filter.nbytes if self._filter is not None else 0)

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return ((keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - self.FILTER_BITS)).astype(np.intp)

    def _ensure_filter(self) -> np.ndarray:
        if self._filter is None:
            self._filter = np.zeros(1 << self.FILTER_BITS, dtype=np.uint8)
            for run in self._runs:
                self._filter[self._slots(run)] = 1
        return self._filter

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Return which ``keys`` are in the set."""
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys) or not self._runs:
            return found
        lo, hi = keys.min(), keys.max()
        runs = [r for r in self._runs if not (r[0] > hi or r[-1] < lo)]
        if not runs:
            return found
        if len(keys) > 1024:
            maybe = np.flatnonzero(self._ensure_filter()[self._slots(keys)])
            if len(maybe) < len(keys):
                found[maybe] = self._search(runs, keys[maybe])
                return found
        return self._search(runs, keys)

    @staticmethod
    def _search(runs: list[np.ndarray], keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for run in runs:
            pos = np.searchsorted(run, keys)
            pos[pos == len(run)] = len(run) - 1
            found |= run[pos] == keys
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add ``keys`` (any order, repeats allowed) to the set."""
        if len(keys):
            self._append(np.unique(keys) if not _increasing(keys) else keys)

    def add_new(self, keys: np.ndarray) -> np.ndarray:
        """Add ``keys`` and return the mask of those seen for the first time (in this batch too)."""
        n = len(keys)
        if _increasing(keys):
            new = ~self.contains(keys)
            if new.any():
                self._append(keys[new], known_new=True)
            return new
        ordered = np.sort(keys)
        repeat = ordered[1:] == ordered[:-1]
        first = np.ones(n, dtype=bool)
        if repeat.any():
            # Only the rows of keys repeated inside the batch need their order looked at.
            rows = np.flatnonzero(_member(keys, np.unique(ordered[1:][repeat])))
            sub = keys[rows]
            order = np.argsort(sub, kind="stable")  # each key's first row first
            later = np.zeros(len(rows), dtype=bool)
            later[1:] = sub[order][1:] == sub[order][:-1]
            first[rows[order[later]]] = False
            unique = ordered[np.concatenate(([True], ~repeat))]
        else:
            unique = ordered
        seen = self.contains(unique)
        if seen.any():
            first &= ~_member(keys, unique[seen])
            unique = unique[~seen]
        self._append(unique, known_new=True)
        return first

    def _append(self, run: np.ndarray, known_new: bool = False) -> None:
        """Append a sorted run of unique keys, dropping those already in the set."""
        if self._runs and not known_new:
            run = run[~self.contains(run)]
        if not len(run):
            return
        run = np.array(run, dtype=np.uint64)
        if self._filter is not None:
            self._filter[self._slots(run)] = 1
        self._runs.append(run)
        self.size += len(run)
        while len(self._runs) >= 2:
            a, b = self._runs[-2], self._runs[-1]
            if len(a) > 2 * len(b) or a[-1] < b[0] or b[-1] < a[0]:
                break
            merged = np.concatenate([a, b])
            merged.sort(kind="stable")  # two sorted runs: a linear merge
            self._runs[-2:] = [merged]


def _increasing(keys: np.ndarray) -> bool:
    return len(keys) < 2 or bool(np.all(keys[1:] > keys[:-1]))


def _member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Return which ``keys`` are in the sorted unique array ``sorted_set`` (small, usually)."""
    if not len(sorted_set):
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_set, keys)
    pos[pos == len(sorted_set)] = len(sorted_set) - 1
    return sorted_set[pos] == keys
