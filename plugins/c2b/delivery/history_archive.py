"""Move a contact or re-entry history out of Redis at cleanup, into one file on the run artifacts' storage.

The histories (:mod:`c2b.delivery.contacts`: who was messaged when, by any plan, 180 days;
:mod:`c2b.delivery.reentry`: who got one plan when) are 16,384 bucket strings of 10-byte records,
written by deliver tasks and read by nothing but extracts. Kept in Redis between runs they were
~11 bytes a user each, for every user reached within the horizon. So a run's ``cleanup`` moves
them (:meth:`HistoryArchive.move`):

1. every bucket is read (pipelined ``GET``s) and merged with the history's file (the later day of
   a user wins; records older than the history's horizon are dropped), and the union is written
   whole or not at all (:func:`c2b.storage.write_bytes`), read back and compared;
2. each bucket is then deleted only if it still holds what was read (a script compares SHA-1s,
   many buckets a call on a plain Redis): a bucket written meanwhile (another plan's delivery, a
   cleared deliver task) stays for the next move.

A lock in Redis lets one move of a history run at a time (cleanups of several plans move the
contact history; another waits for its turn, up to :data:`LOCK_WAIT_S`, then fails and Airflow
retries it).

Readers take both tiers, Redis *first*, then the file (:class:`~c2b.delivery.history_snapshot.HistoryLookup`):
a move writes the file before it deletes anything, so a record a reader no longer finds in Redis is
in the file it reads next. A record in both reads the same. A file that cannot be read or fails its
checksum fails the reader without retries (:class:`HistoryArchiveError`), naming the file and what
to do.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from c2b import storage
from c2b.delivery.contacts import RECORD, epoch_day
from c2b.delivery.history_snapshot import HistorySnapshot

MAGIC = b"C2B-HISTORY 1\n"  # then the records as the buckets hold them (RECORD bytes), keys and days apart
LOCK_MS = 10 * 60 * 1000
LOCK_WAIT_S = 120.0
_GETS_PER_CALL = 1024
_UNLINK_PER_CALL = 256  # buckets a compare-and-delete call

# KEYS: buckets. ARGV: the SHA-1 of the value read of each. Deletes each that still holds that value;
# returns how many. (Several keys a call on a plain Redis; one on a cluster, where a script's keys
# share a slot.)
_UNLINK_IF_SAME = """
local n = 0
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and redis.sha1hex(v) == ARGV[i] then n = n + redis.call('UNLINK', KEYS[i]) end
end
return n
"""
_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class HistoryArchiveError(RuntimeError):
    """A history file is not whole: the rule that reads it cannot be applied."""


@dataclass(frozen=True)
class MoveResult:
    path: str
    records: int      # in the file after the move
    moved: int        # records read from Redis
    deleted: int      # buckets deleted from Redis
    kept: int         # buckets written meanwhile, left in Redis
    dropped: int      # records past the horizon, not kept
    bytes: int


@dataclass(frozen=True)
class HistoryArchive:
    """One history's buckets in Redis and its file: what moves where, and how long records are kept."""

    name: str                        # for messages: "contact history", "re-entry history of plan p"
    path: Any                        # ObjectStoragePath of the file
    key_of: Callable[[int], str]     # bucket number (1-based) -> Redis key
    buckets: int
    horizon_days: int                # records older than this many days are dropped when moved
    lock: str                        # Redis key of the move's lock

    def bucket_names(self) -> list[str]:
        return [self.key_of(b) for b in range(1, self.buckets + 1)]

    # -- the file ----------------------------------------------------------------------------
    def encode(self, snapshot: HistorySnapshot) -> bytes:
        """Magic, a JSON header line, the sorted uid keys (uint64 LE), their days (uint16 LE), SHA-256."""
        header = json.dumps({"history": self.name, "records": snapshot.size})
        # memoryviews and one join: at 10M users each copy of the file is ~100 MB of the cleanup's memory
        parts: list[bytes | memoryview] = [MAGIC, header.encode(), b"\n", snapshot.keys.astype("<u8", copy=False).data,
                                           snapshot.days.astype("<u2").data]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return b"".join([*parts, digest.digest()])

    def decode(self, data: bytes) -> HistorySnapshot:
        body, digest = data[:-32], data[-32:]
        if not data.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
            raise HistoryArchiveError(
                f"{self.path} is not a whole {self.name} file (its checksum does not match): restore it from a "
                "backup, or delete it to forget what it held")
        end = body.index(b"\n", len(MAGIC))
        n = int(json.loads(body[len(MAGIC):end])["records"])
        start = end + 1
        if len(body) - start != RECORD * n:
            raise HistoryArchiveError(f"{self.path} holds {len(body) - start} bytes of records, its header says {n}")
        keys = np.frombuffer(body, dtype="<u8", count=n, offset=start)
        days = np.frombuffer(body, dtype="<u2", count=n, offset=start + 8 * n)  # a view: 2 bytes a user
        return HistorySnapshot(keys, days)

    def read(self) -> HistorySnapshot | None:
        """The file's records, or ``None`` when there is no file."""
        try:
            data = storage.read_bytes(self.path)
        except storage.StorageMissing:
            return None
        return self.decode(data)

    def fingerprint(self) -> list[Any] | None:
        """What identifies the file's current version (``None``: no file), to re-read only a changed file."""
        return storage.fingerprint(self.path) if storage.exists(self.path) else None

    def users(self) -> int:
        found = self.read()
        return found.size if found is not None else 0

    def forget(self) -> int:
        """Delete the file; return how many users it held."""
        held = self.users()
        storage.delete(self.path)
        return held

    # -- the move ----------------------------------------------------------------------------
    def read_buckets(self, redis: Any) -> list[tuple[str, bytes]]:
        names = self.bucket_names()
        out: list[tuple[str, bytes]] = []
        for i in range(0, len(names), _GETS_PER_CALL):
            part = names[i:i + _GETS_PER_CALL]
            pipe = redis.pipeline(transaction=False)
            for name in part:
                pipe.get(name)
            out += [(name, bytes(v)) for name, v in zip(part, pipe.execute(), strict=True) if v]
        return out

    @staticmethod
    def delete_unchanged(redis: Any, buckets: list[tuple[str, str]]) -> int:
        """Delete each bucket ``(name, SHA-1 of the value read)`` that still holds that value; return
        how many went."""
        unlink = redis.register_script(_UNLINK_IF_SAME)
        if hasattr(redis, "get_node_from_key"):  # a script's keys must share a slot: one bucket a call
            return sum(int(unlink(keys=[k], args=[v])) for k, v in buckets)
        deleted = 0
        for i in range(0, len(buckets), _UNLINK_PER_CALL):
            part = buckets[i:i + _UNLINK_PER_CALL]
            deleted += int(unlink(keys=[k for k, _ in part], args=[v for _, v in part]))
        return deleted

    def move(self, redis: Any, now: datetime, wait_s: float = LOCK_WAIT_S) -> MoveResult | None:
        """Move the history's records from Redis into its file; ``None`` when Redis holds none."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        while not redis.set(self.lock, token, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                raise RuntimeError(f"another cleanup has been moving the {self.name} for over {wait_s:.0f} s "
                                   f"(lock {self.lock}): retry later")
            time.sleep(0.2)
        try:
            buckets = self.read_buckets(redis)
            if not buckets:
                return None
            # What was read, as SHA-1s for the delete: the values themselves (~100 MB at 10M users)
            # are freed once parsed.
            seen = [(name, hashlib.sha1(v).hexdigest()) for name, v in buckets]
            raw = b"".join([memoryview(v)[:len(v) - len(v) % RECORD] for _, v in buckets])
            del buckets
            live = HistorySnapshot.from_records(raw, RECORD)
            del raw
            before = self.read()
            union = live.merged(before) if before is not None else live
            kept = union.since(epoch_day(now) - self.horizon_days)
            moved, dropped = live.size, union.size - kept.size
            del live, before, union
            data = self.encode(kept)
            records = kept.size
            del kept
            storage.write_bytes(self.path, data)
            if storage.read_bytes(self.path) != data:
                raise storage.StorageError(f"writing {self.path} failed: the file read back differs from what "
                                           "was written")
            deleted = self.delete_unchanged(redis, seen)
            return MoveResult(str(self.path), records, moved, deleted, len(seen) - deleted, dropped, len(data))
        finally:
            redis.eval(_UNLOCK, 1, self.lock, token)
