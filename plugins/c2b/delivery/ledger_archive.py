"""Move a finished run's ledger out of Redis to the run artifacts' storage at cleanup, and back.

The ledger of a shard (its page strings, outcome buckets, codes, stats, hash and deferred queue:
:mod:`c2b.delivery.ledger`) is what makes a cleared run send nothing twice, so it outlives the
run's cleanup by :data:`~c2b.delivery.ledger.LEDGER_TTL` (7 days). Kept in Redis that is ~10 bytes
a member of every run of the week: ~90 MB after a 10M-user run, ~630 MB for a daily 10M plan, and
nothing reads it until somebody clears the run. So ``cleanup`` moves it:

1. every ledger key of every shard (:func:`ledger_shards`) is read with ``DUMP`` (Redis's own serialization: exact, any
   type) and its expiry, and written as one file, ``<data url>/ledgers/<plan>/<run>.ledger``
   (:func:`c2b.storage.write_bytes`: whole or not at all), merged with what an earlier archive of
   the same run holds that Redis no longer has;
2. the file is read back and its checksum compared: a store that lost or changed it fails the task
   (Airflow retries it) with the keys still in Redis;
3. each key is deleted only if it is still what was archived (a script compares its ``DUMP``'s
   SHA-1): a key written meanwhile stays, and is newer than its copy.

A later load of the same run (the run was cleared: extract and load run again) restores the file
before it writes the audience, and so before any deliver task can start: ``RESTORE`` with the
key's absolute expiry (a key whose 7 days are over is not restored, as Redis would have expired
it), never over a key that exists (it is newer). The file stays: the next cleanup writes the
union. A file that cannot be read or fails its checksum fails the load without retries: the run
cannot know what was sent, and says which file and what to do. Files are deleted by the plan's
cleanups once their keys would have expired (:func:`purge_archives`).

Redis Cluster: every key is read, restored and deleted on its own (its slot's node). ``RESTORE``
takes payloads of the same or an older Redis version: restore on the version that archived or a
newer one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from c2b import storage
from c2b.delivery.ledger import LEDGER_TTL
from c2b.settings import safe_name
from c2b.store.shards import ShardKeys

log = logging.getLogger(__name__)

MAGIC = b"C2B-LEDGER-ARCHIVE 1\n"
_ENTRY = struct.Struct(">HqI")  # name length, absolute expiry in ms (-1: none), payload length
NO_EXPIRY = -1
PIPELINE_KEYS = 500  # keys per pipeline round trip (a page string is ~36 KB at 4,000 users)

# Delete a key only if it is still what was archived (its DUMP's SHA-1 is the archived one's).
_UNLINK_IF_SAME = """
local now = redis.call('DUMP', KEYS[1])
if now and redis.sha1hex(now) == ARGV[1] then return redis.call('UNLINK', KEYS[1]) end
return 0
"""


class LedgerArchiveError(RuntimeError):
    """A run's archived ledger cannot be read back: what was sent is unknown, so nothing is sent."""


@dataclass(frozen=True)
class ArchivedKey:
    name: str
    expire_at_ms: int  # absolute Unix time in ms, or NO_EXPIRY
    payload: bytes  # DUMP's serialization


@dataclass
class ArchiveResult:
    path: str
    keys: int = 0  # keys in the file
    deleted: int = 0  # keys removed from Redis
    kept: int = 0  # keys left in Redis: written after they were read (newer than their copy)
    bytes: int = 0  # the file's size


def archive_path(plan_id: str, run_id: str):  # -> ObjectStoragePath
    """Where a run's archived ledger lives: ``<data url>/ledgers/<plan>/<run>.ledger``."""
    from c2b.settings import ledgers_dir

    return ledgers_dir() / plan_id / f"{safe_name(run_id)}.ledger"


def shard_ledger_keys(redis: Any, plan_id: str, run_id: str, shards: Iterable[int]) -> list[str]:
    """Every key of the ledger of each of ``shards`` (those that may exist; missing ones are skipped later):
    the hash, stats, deferred queue, codes and page index, each page string the index names, and each
    outcome bucket the codes' bucket count says."""
    from c2b.delivery.ledger import ShardLedger

    ledgers = [ShardLedger(redis, ShardKeys(plan_id, run_id, s)) for s in shards]
    pipe = redis.pipeline(transaction=False)
    for led in ledgers:
        pipe.hkeys(led.pages_key)
        pipe.hget(led.codes, "#nb")
    answers = pipe.execute()
    names: list[str] = []
    for i, led in enumerate(ledgers):
        pages, buckets = answers[2 * i], answers[2 * i + 1]
        names += [led.ledger, led.stats, led.deferred, led.codes, led.pages_key]
        names += [f"c2b:{led.keys.tag}:pg:{_text(p)}" for p in sorted(pages)]
        names += [led.bucket_key(b) for b in range(int(buckets or 0))]
    return names


LEDGER_SUFFIXES = ("ledger", "stats", "deferred", "codes", "pages")  # every shard with a ledger has some of these


def ledger_shards(redis: Any, plan_id: str, run_id: str) -> list[int]:
    """The shards of a run that have a ledger: the run's :func:`~c2b.delivery.ledger.ledger_shards_key`
    set (every load of the run, whatever its shard count), else (a run written before that set
    existed) one ``SCAN`` of the keyspace, every node of a cluster."""
    from c2b.delivery.ledger import ledger_shards_key
    from c2b.store.shards import shard_key_pattern, shard_of_key

    listed = redis.smembers(ledger_shards_key(plan_id, run_id))
    if listed:
        return sorted(int(s) for s in listed)
    found = set()
    for key in redis.scan_iter(match=shard_key_pattern(plan_id, run_id, "*"), count=1000):
        name = _text(key)
        if name.rsplit(":", 1)[-1] in LEDGER_SUFFIXES:
            shard = shard_of_key(plan_id, run_id, name)
            if shard is not None:
                found.add(shard)
    return sorted(found)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def dump_keys(redis: Any, names: Sequence[str], now_ms: int | None = None) -> list[ArchivedKey]:
    """``DUMP`` and the expiry of each existing key of ``names``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out: list[ArchivedKey] = []
    for i in range(0, len(names), PIPELINE_KEYS):
        part = names[i:i + PIPELINE_KEYS]
        pipe = redis.pipeline(transaction=False)
        for name in part:
            pipe.dump(name)
            pipe.pttl(name)
        answers = pipe.execute()
        for j, name in enumerate(part):
            payload, pttl = answers[2 * j], int(answers[2 * j + 1])
            if payload is None or pttl == -2:  # not there (never written, or expired between the calls)
                continue
            out.append(ArchivedKey(name, NO_EXPIRY if pttl < 0 else now_ms + pttl, bytes(payload)))
    return out


def encode(plan_id: str, run_id: str, keys: Sequence[ArchivedKey], now_ms: int) -> bytes:
    """The archive file: magic, a JSON header line, the entries, and the SHA-256 of all before it."""
    header = json.dumps({"plan": plan_id, "run": run_id, "archived_at_ms": now_ms, "keys": len(keys)})
    parts = [MAGIC, header.encode() + b"\n"]
    for k in keys:
        name = k.name.encode()
        parts += [_ENTRY.pack(len(name), k.expire_at_ms, len(k.payload)), name, k.payload]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, where: str) -> list[ArchivedKey]:
    """Read an archive file; :class:`LedgerArchiveError` if it is not whole or not one."""
    body, digest = data[:-32], data[-32:]
    if not data.startswith(MAGIC) or hashlib.sha256(body).digest() != digest:
        raise LedgerArchiveError(f"{where} is not a whole ledger archive (its checksum does not match)")
    end = body.index(b"\n", len(MAGIC))
    header = json.loads(body[len(MAGIC):end])
    pos, keys = end + 1, []
    while pos < len(body):
        size, expire_at, length = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        name = body[pos:pos + size].decode()
        pos += size
        keys.append(ArchivedKey(name, expire_at, body[pos:pos + length]))
        pos += length
    if len(keys) != header["keys"]:
        raise LedgerArchiveError(f"{where} holds {len(keys)} keys, its header says {header['keys']}")
    return keys


def archive_ledgers(redis: Any, plan_id: str, run_id: str, shards: Iterable[int],
                    also: Sequence[str] = ()) -> ArchiveResult | None:
    """Move the ledgers of the run's ``shards`` (and the keys ``also`` names: the run's offer-budget
    reservations) to :func:`archive_path`; ``None`` when Redis holds none of them (nothing delivered, or
    archived before): an existing archive is then left as it is."""
    path = archive_path(plan_id, run_id)
    now_ms = int(time.time() * 1000)
    from c2b.delivery.ledger import ledger_shards_key

    names = [*shard_ledger_keys(redis, plan_id, run_id, shards), ledger_shards_key(plan_id, run_id), *also]
    live = dump_keys(redis, names, now_ms)
    if not live:
        return None
    kept_before: list[ArchivedKey] = []
    if storage.exists(path):  # an earlier cleanup of this run (it was cleared since): keep what Redis lost
        live_names = {k.name for k in live}
        kept_before = [k for k in read_archive(path)
                       if k.name not in live_names and (k.expire_at_ms == NO_EXPIRY or k.expire_at_ms > now_ms)]
    data = encode(plan_id, run_id, live + kept_before, now_ms)
    storage.write_bytes(path, data)
    if hashlib.sha256(storage.read_bytes(path)).digest() != hashlib.sha256(data).digest():
        raise storage.StorageError(f"writing {path} failed: the file read back differs from what was written")
    deleted = delete_archived(redis, live)
    return ArchiveResult(str(path), keys=len(live) + len(kept_before), deleted=deleted, kept=len(live) - deleted,
                         bytes=len(data))


def delete_archived(redis: Any, keys: Sequence[ArchivedKey]) -> int:
    """Delete each key that is still what was archived; return how many went (the others are newer)."""
    unlink = redis.register_script(_UNLINK_IF_SAME)
    deleted = 0
    for i in range(0, len(keys), PIPELINE_KEYS):
        part = keys[i:i + PIPELINE_KEYS]
        if hasattr(redis, "get_node_from_key"):  # redis-py runs no EVALSHA in a cluster pipeline
            answers = [unlink(keys=[k.name], args=[hashlib.sha1(k.payload).hexdigest()]) for k in part]
        else:
            pipe = redis.pipeline(transaction=False)
            for k in part:
                unlink(keys=[k.name], args=[hashlib.sha1(k.payload).hexdigest()], client=pipe)
            answers = pipe.execute()
        deleted += sum(int(a) for a in answers)
    return deleted


def read_archive(path: Any) -> list[ArchivedKey]:
    try:
        data = storage.read_bytes(path)
    except storage.StorageMissing as exc:
        raise LedgerArchiveError(f"the ledger archive {path} disappeared while being read: {exc}") from exc
    return decode(data, str(path))


def restore_ledgers(redis: Any, plan_id: str, run_id: str) -> int:
    """Put a cleared run's archived ledger back in Redis; return how many keys were restored.

    No archive: 0 (the run was never cleaned up, or its ledger expired). A key that exists is left
    alone (it was written after the archive); a key past its expiry is not restored.
    """
    path = archive_path(plan_id, run_id)
    if not storage.exists(path):
        return 0
    try:
        keys = read_archive(path)
    except LedgerArchiveError as exc:
        raise LedgerArchiveError(
            f"{exc}. This run's ledger (who was already sent) was archived there by its cleanup and "
            f"cannot be read back, so the run cannot promise to send nobody twice. Restore the file "
            f"from a backup, or delete it to run again without that promise.") from exc
    now_ms = int(time.time() * 1000)
    due = [k for k in keys if k.expire_at_ms == NO_EXPIRY or k.expire_at_ms > now_ms + 1000]
    restored = 0
    for i in range(0, len(due), PIPELINE_KEYS):
        part = due[i:i + PIPELINE_KEYS]
        pipe = redis.pipeline(transaction=False)
        for k in part:
            if k.expire_at_ms == NO_EXPIRY:
                pipe.restore(k.name, 0, k.payload)
            else:
                pipe.restore(k.name, k.expire_at_ms, k.payload, absttl=True)
        for answer in pipe.execute(raise_on_error=False):
            if isinstance(answer, Exception):
                if "BUSYKEY" not in str(answer):
                    raise answer
            else:
                restored += 1
    log.info("restored %s of %s archived ledger keys of %s / %s from %s (%s already in Redis, %s expired)",
             restored, len(keys), plan_id, run_id, path, len(due) - restored, len(keys) - len(due))
    return restored


def purge_archives(plan_id: str, now: float | None = None) -> int:
    """Delete the plan's ledger archives written more than the ledger's TTL ago (every key in them has
    expired by then, so a restore would bring nothing back); return how many."""
    cutoff = (now if now is not None else time.time()) - LEDGER_TTL
    from c2b.settings import ledgers_dir

    removed = 0
    for entry, is_folder, newest in storage.entries(ledgers_dir() / plan_id):
        if newest < cutoff and storage.delete(entry, recursive=is_folder):
            removed += 1
    return removed
