"""Look a whole audience up in a contact or re-entry history with one read of the history.

The histories (:mod:`c2b.delivery.contacts`, :mod:`c2b.delivery.reentry`) keep fixed-width records
in 16,384 bucket strings. A lookup script per bucket suits a few thousand uids; an extract's batch
of 100,000 uids touches every bucket, so per batch it ran 16,384 scripts, and a 10M-user extract
~2.5M of them (about 50 of its 61 seconds in bench/e2e.py). The extract reads every uid anyway, so
here every bucket is read once (plain ``GET``s, pipelined, no Lua) into two sorted numpy arrays,
uid key and epoch day, and each batch is a vectorised ``searchsorted``.

Memory is the history's own size (10 bytes a recorded user, e.g. ~100 MB for 10M users), held
only during the extract, and read only when a batch is large enough to touch most buckets
(:data:`MIN_BATCH`); small audiences keep the per-bucket scripts. The snapshot is taken at the first
large batch: a send recorded by another plan while this extract runs may or may not be seen, as
with per-batch lookups (each batch saw the history as of its own moment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MIN_BATCH = 4096  # uids; below this a batch touches few buckets and the lookup scripts are cheaper
_GETS_PER_CALL = 1024


def uid_keys_u8(uids: Any) -> np.ndarray:
    """Return the record keys (:func:`c2b.delivery.records.uid_key`) of an Arrow string array as uint64."""
    from c2b.delivery.records import uid_keys_arrow
    from c2b.store import packed

    ints = packed.canonical_ints(uids)
    if ints is not None:  # the key of a canonical integer uid is its int64, little-endian
        return np.asarray(ints, dtype="<i8").view("<u8")
    return np.frombuffer(b"".join(uid_keys_arrow(uids)), dtype="<u8")


class HistorySnapshot:
    """Every record of one history, as sorted uid keys (uint64) and epoch days (int32; uint16 as a
    history file holds them)."""

    def __init__(self, keys: np.ndarray, days: np.ndarray) -> None:
        self.keys = keys
        self.days = days

    @classmethod
    def read(cls, redis: Any, key_of: Callable[[int], str], buckets: int, record: int) -> HistorySnapshot:
        """Read buckets ``1..buckets`` of a history of ``record``-byte records (8-byte key + uint16 day)."""
        chunks: list[bytes] = []
        for start in range(1, buckets + 1, _GETS_PER_CALL):
            pipe = redis.pipeline(transaction=False)
            for b in range(start, min(start + _GETS_PER_CALL, buckets + 1)):
                pipe.get(key_of(b))
            chunks += [s for s in pipe.execute() if s]
        return cls.from_records(b"".join(s[:len(s) - len(s) % record] for s in chunks), record)

    @classmethod
    def from_records(cls, raw: bytes, record: int) -> HistorySnapshot:
        """Parse ``record``-byte records (8-byte key + uint16 day [+ padding]) in any order."""
        rows = np.frombuffer(raw, dtype=np.dtype([("k", "<u8"), ("d", "<u2"), ("pad", f"V{record - 10}")])
                             if record > 10 else np.dtype([("k", "<u8"), ("d", "<u2")]))
        return cls._sorted(rows["k"], rows["d"].astype(np.int32))

    @classmethod
    def _sorted(cls, keys: np.ndarray, days: np.ndarray) -> HistorySnapshot:
        order = np.argsort(keys)  # not stable: of a key's records the latest day is kept, whatever their order
        keys, days = keys[order], days[order]
        del order
        if len(keys) > 1 and (keys[1:] == keys[:-1]).any():  # a key twice (two tiers): keep its later day
            last = np.r_[keys[1:] != keys[:-1], True]
            later = np.maximum.reduceat(days, np.r_[0, np.flatnonzero(last)[:-1] + 1])
            keys, days = keys[last], later
        return cls(keys, days)

    def merged(self, other: HistorySnapshot) -> HistorySnapshot:
        """Both snapshots' records; a key in both keeps its later day."""
        return self._sorted(np.concatenate([self.keys, other.keys]), np.concatenate([self.days, other.days]))

    def since(self, day: int) -> HistorySnapshot:
        """The records of epoch day ``day`` or later."""
        keep = self.days >= day
        return HistorySnapshot(self.keys[keep], self.days[keep])

    @property
    def size(self) -> int:
        return len(self.keys)

    def last_days(self, wanted: np.ndarray) -> np.ndarray:
        """Return the epoch day of the record of each uid key (uint64, :func:`uid_keys_u8`; 0: none)."""
        out = np.zeros(len(wanted), dtype=np.int32)
        if not len(self.keys) or not len(wanted):
            return out
        at = np.searchsorted(self.keys, wanted)
        at[at == len(self.keys)] = 0
        hit = self.keys[at] == wanted
        out[hit] = self.days[at[hit]]
        return out


class HistoryLookup:
    """``contacted since`` for an extract: per-bucket scripts for small batches, a snapshot for large ones.

    ``key_of``/``buckets``/``legacy_of``/``legacy_buckets`` name the history as in
    :func:`c2b.delivery.contacts.contacted_since_array`. While buckets of a former hash layout
    still exist, every batch takes that path (it merges them).
    """

    def __init__(self, redis: Any, *, key_of: Callable[[int], str] | None = None, buckets: int | None = None,
                 legacy_of: Callable[[int], str] | None = None, legacy_buckets: int | None = None,
                 archive: Any = None) -> None:
        from c2b.delivery import contacts

        self.redis = redis
        self.key_of: Callable[[int], str] = key_of or contacts.bucket_key
        self.buckets: int = buckets or contacts.BUCKETS
        self.legacy_of = legacy_of if key_of else contacts.legacy_bucket_key
        self.legacy_buckets: int = legacy_buckets or contacts.LEGACY_BUCKETS
        self.snapshot: HistorySnapshot | None = None
        # The records moved out of Redis (a c2b.delivery.history_archive.HistoryArchive): its file,
        # read after Redis on every call and re-read when it changed.
        self.archive = archive
        self._archived: HistorySnapshot | None = None
        self._archived_version: Any = None

    def _archived_days(self, keys: np.ndarray) -> np.ndarray | None:
        """The file's day of each uid key, read *after* Redis: a move writes its file before it deletes
        from Redis, so what a Redis read no longer found is in the file read next."""
        if self.archive is None:
            return None
        version = self.archive.fingerprint()
        if version != self._archived_version:
            self._archived = self.archive.read() if version is not None else None
            self._archived_version = version
        return self._archived.last_days(keys) if self._archived is not None else None

    def matches(self, texts: Any, since: Any) -> np.ndarray:
        """Return a mask of the uids (an Arrow string array, no nulls) with a record on or after ``since``."""
        from c2b.delivery import contacts

        floor = contacts.epoch_day(since)
        if self.snapshot is None:
            legacy = self.legacy_of is not None and contacts.legacy_present(self.redis, self.legacy_of,
                                                                           self.legacy_buckets)
            if len(texts) < MIN_BATCH or legacy:
                mask = contacts.contacted_since_array(self.redis, texts, since, key_of=self.key_of,
                                                      buckets=self.buckets, legacy_of=self.legacy_of,
                                                      legacy_buckets=self.legacy_buckets)
                archived = self._archived_days(uid_keys_u8(texts)) if len(texts) else None
                return mask if archived is None else mask | ((archived > 0) & (archived >= floor))
            self.snapshot = HistorySnapshot.read(self.redis, self.key_of, self.buckets, contacts.RECORD)
        keys = uid_keys_u8(texts)
        days = self.snapshot.last_days(keys)
        archived = self._archived_days(keys)
        if archived is not None:
            days = np.maximum(days, archived)
        return (days > 0) & (days >= floor)
