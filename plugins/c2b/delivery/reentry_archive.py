"""Move a plan's re-entry history out of Redis at cleanup, into one file per plan.

The re-entry history (:mod:`c2b.delivery.reentry`: 16,384 bucket strings of 10-byte records per
plan) is written by the plan's deliver tasks and read by nothing but the *next* extract of the
same plan. A plan's runs never overlap (its DAG has ``max_active_runs=1`` and every run ends with
``cleanup``, whatever happened before it), so between runs the history needs no Redis: kept there
it was ~11 bytes a user of every user the plan ever reached within its rule's horizon. So
``cleanup`` moves it:

1. every bucket of the plan is read (pipelined ``GET``s) and merged with the plan's file,
   ``<data url>/reentry/<plan>.history`` (the later day wins; records older than the plan's
   history horizon, :func:`c2b.delivery.reentry.history_days`, are dropped), and the union is
   written whole or not at all (:func:`c2b.storage.write_bytes`), read back and compared;
2. each bucket is then deleted only if it still holds what was read (a script compares SHA-1s):
   a bucket written meanwhile (a cleared deliver task) stays, and the next cleanup moves it.

Readers take both tiers (:class:`c2b.delivery.history_snapshot.HistoryLookup` with ``archived``):
a crash between the two steps leaves a record in both, which reads the same. A file that cannot be
read or fails its checksum fails the extract without retries: re-entry cannot be applied without
it, and the error names the file and what to do. A lock in Redis keeps two cleanups of one plan
(which ``max_active_runs`` already prevents) from writing the file at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from c2b import storage
from c2b.delivery.contacts import RECORD, epoch_day
from c2b.delivery.history_snapshot import HistorySnapshot
from c2b.settings import safe_name

log = logging.getLogger(__name__)

MAGIC = b"C2B-REENTRY-HISTORY 1\n"
LOCK_MS = 10 * 60 * 1000
_GETS_PER_CALL = 1024

# KEYS[1]: a bucket. ARGV[1]: the SHA-1 of the value that was archived. Deletes it only if unchanged.
_UNLINK_IF_SAME = """
local v = redis.call('GET', KEYS[1])
if v and redis.sha1hex(v) == ARGV[1] then return redis.call('UNLINK', KEYS[1]) end
return 0
"""


class ReentryHistoryError(RuntimeError):
    """A plan's re-entry history file is not whole: re-entry cannot be applied from it."""


@dataclass(frozen=True)
class MoveResult:
    path: str
    records: int      # in the file after the move
    moved: int        # records read from Redis
    deleted: int      # buckets deleted from Redis
    kept: int         # buckets written meanwhile, left in Redis
    dropped: int      # records past the plan's horizon, not kept
    bytes: int


def history_path(plan_id: str):  # -> ObjectStoragePath
    """``<data url>/reentry/<plan>.history``."""
    return storage.root() / "reentry" / f"{safe_name(plan_id)}.history"


def encode(plan_id: str, snapshot: HistorySnapshot) -> bytes:
    """Magic, a JSON header line, the sorted uid keys (uint64 LE), their days (uint16 LE), SHA-256."""
    header = json.dumps({"plan": plan_id, "records": snapshot.size})
    body = b"".join([MAGIC, header.encode(), b"\n", snapshot.keys.astype("<u8").tobytes(),
                     snapshot.days.astype("<u2").tobytes()])
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, where: str) -> HistorySnapshot:
    body, digest = data[:-32], data[-32:]
    if not data.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
        raise ReentryHistoryError(f"{where} is not a whole re-entry history (its checksum does not match): "
                                  "restore it from a backup, or delete it to let every user enter the plan again")
    end = body.index(b"\n", len(MAGIC))
    n = int(json.loads(body[len(MAGIC):end])["records"])
    start = end + 1
    if len(body) - start != 10 * n:
        raise ReentryHistoryError(f"{where} holds {len(body) - start} bytes of records, its header says {n} records")
    keys = np.frombuffer(body, dtype="<u8", count=n, offset=start)
    days = np.frombuffer(body, dtype="<u2", count=n, offset=start + 8 * n).astype(np.int32)
    return HistorySnapshot(keys, days)


def read_archived(plan_id: str) -> HistorySnapshot | None:
    """The plan's history file, or ``None`` when it has none."""
    path = history_path(plan_id)
    try:
        data = storage.read_bytes(path)
    except storage.StorageMissing:
        return None
    return decode(data, str(path))


def archived_users(plan_id: str) -> int:
    found = read_archived(plan_id)
    return found.size if found is not None else 0


def _read_buckets(redis: Any, plan_id: str) -> list[tuple[str, bytes]]:
    from c2b.delivery.reentry import BUCKETS, bucket_key

    names = [bucket_key(plan_id, b) for b in range(1, BUCKETS + 1)]
    out: list[tuple[str, bytes]] = []
    for i in range(0, len(names), _GETS_PER_CALL):
        part = names[i:i + _GETS_PER_CALL]
        pipe = redis.pipeline(transaction=False)
        for name in part:
            pipe.get(name)
        out += [(name, bytes(v)) for name, v in zip(part, pipe.execute(), strict=True) if v]
    return out


def _delete_unchanged(redis: Any, buckets: list[tuple[str, bytes]]) -> int:
    unlink = redis.register_script(_UNLINK_IF_SAME)
    deleted = 0
    for i in range(0, len(buckets), _GETS_PER_CALL):
        part = buckets[i:i + _GETS_PER_CALL]
        if hasattr(redis, "get_node_from_key"):  # redis-py runs no EVALSHA in a cluster pipeline
            answers = [unlink(keys=[k], args=[hashlib.sha1(v).hexdigest()]) for k, v in part]
        else:
            pipe = redis.pipeline(transaction=False)
            for k, v in part:
                unlink(keys=[k], args=[hashlib.sha1(v).hexdigest()], client=pipe)
            answers = pipe.execute()
        deleted += sum(int(a) for a in answers)
    return deleted


def move_reentry_history(redis: Any, plan: Any, now: datetime) -> MoveResult | None:
    """Move the plan's re-entry records from Redis into its history file; ``None`` when Redis holds none."""
    from c2b.delivery.reentry import history_days

    lock, token = f"c2b:reentry-move:{{{safe_name(plan.id)}}}", uuid.uuid4().hex
    if not redis.set(lock, token, nx=True, px=LOCK_MS):
        raise RuntimeError(f"another cleanup of plan {plan.id} is moving its re-entry history: retry later")
    try:
        buckets = _read_buckets(redis, plan.id)
        if not buckets:
            return None
        live = HistorySnapshot.from_records(b"".join(v[:len(v) - len(v) % RECORD] for _, v in buckets), RECORD)
        before = read_archived(plan.id)
        union = live.merged(before) if before is not None else live
        kept = union.since(epoch_day(now) - history_days(plan))
        path = history_path(plan.id)
        data = encode(plan.id, kept)
        storage.write_bytes(path, data)
        if storage.read_bytes(path) != data:
            raise storage.StorageError(f"writing {path} failed: the file read back differs from what was written")
        deleted = _delete_unchanged(redis, buckets)
        return MoveResult(str(path), kept.size, live.size, deleted, len(buckets) - deleted,
                          union.size - kept.size, len(data))
    finally:
        redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                   1, lock, token)


def forget_archived(plan_id: str) -> int:
    """Delete the plan's history file (``c2b demo``'s reset); return how many users it held."""
    held = archived_users(plan_id)
    storage.delete(history_path(plan_id))
    return held

