"""Suppression lists in Redis, sharded like the audience so no list is one big key.

A list used to be one SET, ``c2b:suppression:<name>``: an opt-out list of millions of users was
a big key (slow to scan, to migrate between cluster nodes, to delete). Now a list is
:data:`BUCKETS` SETs, one per murmur3 shard index of the uid (the audience's formula with the
largest shard count)::

    c2b:suppression:{<name>:<bucket>}   SET   uids whose shard_index(uid, 1024) == bucket

so a list of 10M users holds ~10k per key, each bucket may live on another cluster node, and a
membership check of a page of uids is one pipelined SMISMEMBER per bucket the page touches.

Lists written the old way are migrated on first use (:func:`migrate_legacy`): members are copied
into their buckets in chunks, then the old key is unlinked.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from c2b.hashing import MAX_SHARDS, shard_index

log = logging.getLogger(__name__)

BUCKETS = MAX_SHARDS
LEGACY_KEY = "c2b:suppression:{}"
CHUNK = 10_000
_migrated: set[tuple[int, str]] = set()  # (id of the client, list) already checked in this process


def bucket_key(name: str, bucket: int) -> str:
    """Return the key of one bucket of list ``name`` (the hash tag keeps a bucket in one slot)."""
    return "c2b:suppression:{" + f"{name}:{bucket}" + "}"


def marker_key(name: str) -> str:
    """Return the key that says list ``name`` has ever had members (set before the first add), so
    a page is not checked against the 1,024 buckets of a list nobody uses."""
    return "c2b:suppression:{" + name + "}:used"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _by_bucket(uids: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = defaultdict(list)
    for uid in uids:
        out[shard_index(uid, BUCKETS)].append(uid)
    return out


def migrate_legacy(redis: Any, name: str) -> int:
    """Move the members of an old single-key list into buckets; return how many were moved."""
    marker = (id(redis), name)
    if marker in _migrated:
        return 0
    legacy = LEGACY_KEY.format(name)
    moved = 0
    if redis.type(legacy) in (b"set", "set"):
        batch: list[str] = []
        for member in redis.sscan_iter(legacy, count=CHUNK):
            batch.append(_text(member))
            if len(batch) >= CHUNK:
                moved += _write(redis, name, batch, "sadd")
                batch = []
        if batch:
            moved += _write(redis, name, batch, "sadd")
        redis.unlink(legacy)
        log.warning("suppression list %s migrated from the single key %s into %s buckets (%s uids)",
                    name, legacy, BUCKETS, moved)
    _migrated.add(marker)
    return moved


def _write(redis: Any, name: str, uids: Sequence[str], op: str) -> int:
    if op == "sadd" and uids:
        redis.set(marker_key(name), 1)  # before the members: a reader never skips a non-empty list
    pipe = redis.pipeline(transaction=False)
    for bucket, members in _by_bucket(uids).items():
        getattr(pipe, op)(bucket_key(name, bucket), *members)
    return sum(int(n) for n in pipe.execute())


def add(redis: Any, name: str, uids: Sequence[str]) -> int:
    """Add ``uids`` to list ``name``; return how many were new."""
    migrate_legacy(redis, name)
    return sum(_write(redis, name, uids[i:i + CHUNK], "sadd") for i in range(0, len(uids), CHUNK))


def remove(redis: Any, name: str, uids: Sequence[str]) -> int:
    """Remove ``uids`` from list ``name``; return how many were there."""
    migrate_legacy(redis, name)
    return sum(_write(redis, name, uids[i:i + CHUNK], "srem") for i in range(0, len(uids), CHUNK))


def count(redis: Any, name: str) -> int:
    """Return the number of uids in list ``name``."""
    migrate_legacy(redis, name)
    pipe = redis.pipeline(transaction=False)
    for bucket in range(1, BUCKETS + 1):
        pipe.scard(bucket_key(name, bucket))
    return sum(int(n) for n in pipe.execute())


def members(redis: Any, name: str) -> Iterator[str]:
    """Yield every uid of list ``name``, bucket by bucket (SSCAN: never one big reply)."""
    migrate_legacy(redis, name)
    for bucket in range(1, BUCKETS + 1):
        for member in redis.sscan_iter(bucket_key(name, bucket), count=CHUNK):
            yield _text(member)


def suppressed(redis: Any, names: Sequence[str], uids: Sequence[str]) -> set[str]:
    """Return which of ``uids`` are on any of the lists ``names``: one round trip to skip lists
    never used, then one pipelined SMISMEMBER per bucket the uids fall in."""
    if not names or not uids:
        return set()
    for name in names:
        migrate_legacy(redis, name)
    pipe = redis.pipeline(transaction=False)
    for name in names:
        pipe.exists(marker_key(name))
    names = [name for name, used in zip(names, pipe.execute(), strict=True) if int(used)]
    if not names:
        return set()
    groups = _by_bucket(dict.fromkeys(uids))
    pipe = redis.pipeline(transaction=False)
    asked: list[list[str]] = []
    for name in names:
        for bucket, group in groups.items():
            pipe.smismember(bucket_key(name, bucket), group)
            asked.append(group)
    out: set[str] = set()
    for group, answers in zip(asked, pipe.execute(), strict=True):
        out.update(uid for uid, hit in zip(group, answers, strict=True) if int(hit))
    return out
