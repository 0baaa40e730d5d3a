"""Contact history: when each user was last messaged, for ``exclude: [{contacted_within_days: N}]``.

One key per user would mean millions of tiny keys; one hash for everyone would be a big key; and a
hash field costs ~60-70 bytes once a hash is large. So the history is kept as fixed-width records
(:mod:`c2b.delivery.records`): the uid's 8-byte key and the UTC epoch day of the last contact
(uint16, little-endian), 10 bytes a user, in :data:`BUCKETS` strings chosen by the platform's shard
formula (``shard_index(uid, 16384)``)::

    c2b:contacts:r:{00001} .. c2b:contacts:r:{16384}    STRING  (uid key, epoch day) x users

At 10M users a bucket holds ~610 records (~6 KB); a bucket reaches 1 MB only past 1.6 billion
users. The ``{...}`` hash tag pins each bucket to one slot. A flush of sent messages touches as
many buckets as it has users, so :func:`record_histories` writes all of them (and the plan's
re-entry history, same layout) with one ``EVALSHA`` taking every bucket as a key on a plain
Redis; on Redis Cluster, where a script's keys must share a slot, one call per slot, pipelined
per node. Each write refreshes each bucket's TTL once, so the history of an idle system expires;
:func:`prune_contacts` drops records older than a horizon. The delivery step records after each
flush of sent messages (:func:`c2b.delivery.reentry.record_sends`).

Earlier versions kept ``uid -> day`` in 1,024 hashes (``c2b:contacts:{0001}`` ..). Nothing writes
them any more; while any of them still exists (they expire 180 days after their last write),
readers look there too and take the later day, so no contact is forgotten by the change.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from c2b.delivery.records import FIND, uid_key, uid_keys_arrow
from c2b.hashing import shard_index, shard_indexes_arrow, uid_bytes
from c2b.store.script_pipelines import run_evalsha, run_scripts, slot_groups

BUCKETS = 16384
DEFAULT_TTL_DAYS = 180
RECORD = 10  # uid key (8) + epoch day (uint16 LE)
_KEY = "c2b:contacts:r:{{{:05d}}}"
LEGACY_BUCKETS = 1024
_LEGACY_KEY = "c2b:contacts:{{{:04d}}}"
LEGACY_CHECK_EVERY_S = 60.0

# KEYS: buckets (of one or more histories). ARGV: day, then for each key in turn its TTL in
# seconds and its uid keys as one string (8 bytes each: one argument a bucket, not one a user).
# Keeps the later day when a record exists (writes may arrive out of order); new records are
# appended with one exact-size SET; one EXPIRE per key. Returns the uid keys it was given.
_RECORD_MAX = FIND + r"""
local day = tonumber(ARGV[1])
local enc = string.char(day % 256, math.floor(day / 256))
local n = 0
for k = 1, #KEYS do
  local key, ttl, blob = KEYS[k], ARGV[2 * k], ARGV[2 * k + 1]
  local s = redis.call('GET', key) or ''
  local add, later, seen = {}, {}, {}
  for i = 1, #blob - 7, 8 do
    local k8 = string.sub(blob, i, i + 7)
    n = n + 1
    if not seen[k8] then
      seen[k8] = true
      local p = find_record(s, k8, 10)
      if p then
        if string.byte(s, p + 8) + 256 * string.byte(s, p + 9) < day then later[#later + 1] = p + 7 end
      else
        add[#add + 1] = k8 .. enc
      end
    end
  end
  if #add > 0 then redis.call('SET', key, s .. table.concat(add)) end
  for _, at in ipairs(later) do redis.call('SETRANGE', key, at, enc) end
  redis.call('EXPIRE', key, ttl)
end
return n
"""

# KEYS: buckets. ARGV: for each key in turn how many uid keys follow, and those uid keys.
# Returns the epoch day of each uid key, in ARGV order (0: no record).
_LOOKUP = FIND + r"""
local out, a = {}, 1
for k = 1, #KEYS do
  local s = redis.call('GET', KEYS[k])
  local last = a + tonumber(ARGV[a])
  for i = a + 1, last do
    local d = 0
    if s then
      local p = find_record(s, ARGV[i], 10)
      if p then d = string.byte(s, p + 8) + 256 * string.byte(s, p + 9) end
    end
    out[#out + 1] = d
  end
  a = last + 1
end
return out
"""
LOOKUP_KEYS = 512  # buckets per lookup call: bounds how long one call holds the server
WRITE_KEYS = 1024  # buckets per write call (a flush of sent messages touches ~2 per message)

# KEYS[1]: a bucket. ARGV: floor day. Drops records older than the floor; returns how many.
_PRUNE = r"""
local s = redis.call('GET', KEYS[1])
if not s then return 0 end
local floor = tonumber(ARGV[1])
local keep, dropped = {}, 0
for p = 1, #s - 9, 10 do
  if string.byte(s, p + 8) + 256 * string.byte(s, p + 9) >= floor then
    keep[#keep + 1] = string.sub(s, p, p + 9)
  else
    dropped = dropped + 1
  end
end
if dropped > 0 then
  if #keep == 0 then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], table.concat(keep), 'KEEPTTL') end
end
return dropped
"""


def bucket_key(bucket: int) -> str:
    """Return the Redis key of contact bucket ``bucket`` (1..BUCKETS)."""
    return _KEY.format(bucket)


def legacy_bucket_key(bucket: int) -> str:
    """Return the key of bucket ``bucket`` (1..LEGACY_BUCKETS) of the former hash layout."""
    return _LEGACY_KEY.format(bucket)


def epoch_day(when: datetime) -> int:
    """Return the UTC day number of ``when`` (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() // 86_400)


def _by_bucket(uids: Iterable[str], buckets: int = BUCKETS) -> dict[int, list[tuple[int, bytes]]]:
    groups: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    for i, uid in enumerate(uids):
        b = uid_bytes(uid)  # bytes, never a str with a lone surrogate
        groups[shard_index(b, buckets)].append((i, b))
    return groups


class History(NamedTuple):
    """A history of this layout: its bucket keys, how many buckets, how long a write keeps it."""

    key_of: Callable[[int], str]
    buckets: int
    ttl_days: int


def record_histories(redis: Any, uids: list[str], when: datetime, histories: Sequence[History]) -> None:
    """Record ``uids`` at ``when`` in every history of ``histories``, in as few script calls as
    the deployment allows: one ``EVALSHA`` taking every bucket on a plain Redis (up to
    :data:`WRITE_KEYS` buckets a call, so a large batch does not hold the server long), one per
    hash slot (pipelined per node) on a cluster."""
    if not uids or not histories:
        return
    day = epoch_day(when)
    keys, arrow = _record_keys(uids)
    where: dict[int, np.ndarray] = {}
    members: dict[str, tuple[int, bytes]] = {}  # bucket key -> (ttl, its uid keys, 8 bytes each)
    for history in histories:
        if history.buckets not in where:
            where[history.buckets] = (shard_indexes_arrow(arrow, history.buckets).astype(np.int64) if arrow is not None
                                      else np.array([shard_index(u, history.buckets) for u in uids], dtype=np.int64))
        buckets = where[history.buckets]
        order = np.argsort(buckets, kind="stable")
        ordered = buckets[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        starts, ends = np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist()
        grouped = keys[order]
        ttl = history.ttl_days * 86_400
        for a, b in zip(starts, ends, strict=True):
            members[history.key_of(int(ordered[a]))] = (ttl, grouped[a:b].tobytes())
    calls = []
    for group in slot_groups(redis, members):
        for c in range(0, len(group), WRITE_KEYS):
            args: list[Any] = [day]
            for key in group[c:c + WRITE_KEYS]:
                args += members[key]
            calls.append((group[c:c + WRITE_KEYS], args))
    run_evalsha(redis, _RECORD_MAX, calls)


def _record_keys(uids: list[str]) -> tuple[np.ndarray, Any]:
    """Return the record keys of ``uids`` as uint64 (their bytes are :func:`uid_key`'s) and the
    uids as an Arrow array (``None`` when Arrow cannot hold them: a lone surrogate)."""
    from c2b.delivery.history_snapshot import uid_keys_u8

    try:
        arrow = pa.array(uids, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
        return np.frombuffer(b"".join(uid_key(u) for u in uids), dtype="<u8"), None
    return uid_keys_u8(arrow), arrow


def record_contacts(redis: Any, uids: list[str], when: datetime, ttl_days: int = DEFAULT_TTL_DAYS, *,
                    key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS) -> None:
    """Record that ``uids`` were contacted at ``when`` (see :func:`record_histories`).

    ``key_of`` and ``buckets`` name another history with the same layout (a plan's own,
    :mod:`c2b.delivery.reentry`).
    """
    record_histories(redis, uids, when, [History(key_of, buckets, ttl_days)])


_legacy_seen: dict[tuple[int, str], tuple[float, bool]] = {}


def legacy_present(redis: Any, key_of: Callable[[int], str], buckets: int) -> bool:
    """Return whether any bucket of a former hash layout still exists (checked once a minute)."""
    name = key_of(1)
    cache = (id(redis), name)
    now = time.monotonic()
    seen = _legacy_seen.get(cache)
    if seen is not None and now - seen[0] < LEGACY_CHECK_EVERY_S:
        return seen[1]
    present = False
    for start in range(1, buckets + 1, 1024):
        pipe = redis.pipeline(transaction=False)
        for b in range(start, min(start + 1024, buckets + 1)):
            pipe.exists(key_of(b))
        if any(pipe.execute()):
            present = True
            break
    _legacy_seen[cache] = (now, present)
    return present


def last_days(redis: Any, uids: list[str], *, key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS,
              legacy_of: Callable[[int], str] | None = legacy_bucket_key, legacy_buckets: int = LEGACY_BUCKETS,
              keys: list[bytes] | None = None, where: np.ndarray | None = None) -> np.ndarray:
    """Return the epoch day of each uid's last record (0: none), as numpy int32.

    One ``EVALSHA`` reads up to :data:`LOOKUP_KEYS` buckets (on a cluster, those of one slot).

    ``keys``/``where`` (uid keys, buckets) may be given when the caller has them vectorised.
    """
    n = len(uids)
    out = np.zeros(n, dtype=np.int32)
    if n == 0:
        return out
    if where is None:
        where = np.array([shard_index(u, buckets) for u in uids], dtype=np.int64)
    if keys is None:
        keys = [uid_key(u) for u in uids]
    order = np.argsort(where, kind="stable")
    ordered = where[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], cuts)).tolist()
    ends = np.concatenate((cuts, [n])).tolist()
    rows = order.tolist()
    span = {key_of(int(ordered[a])): (a, b) for a, b in zip(starts, ends, strict=True)}
    calls = []
    for group in slot_groups(redis, span):
        for c in range(0, len(group), LOOKUP_KEYS):
            args: list[Any] = []
            for key in group[c:c + LOOKUP_KEYS]:
                a, b = span[key]
                args += [b - a, *(keys[i] for i in rows[a:b])]
            calls.append((group[c:c + LOOKUP_KEYS], args))
    for (group, _), days in zip(calls, run_evalsha(redis, _LOOKUP, calls), strict=True):
        at = np.concatenate([order[span[key][0]:span[key][1]] for key in group])
        out[at] = np.asarray(days, dtype=np.int32)
    if legacy_of is not None and legacy_present(redis, legacy_of, legacy_buckets):
        old = np.zeros(n, dtype=np.int32)
        groups = _by_bucket(uids, legacy_buckets)
        pipe = redis.pipeline(transaction=False)
        for bucket, members in groups.items():
            pipe.hmget(legacy_of(bucket), [b for _, b in members])
        for members, days in zip(groups.values(), pipe.execute(), strict=True):
            for (i, _), day in zip(members, days, strict=True):
                if day is not None:
                    old[i] = int(day)
        np.maximum(out, old, out=out)
    return out


def contacted_since(redis: Any, uids: list[str], since: datetime) -> list[bool]:
    """Return, for each uid, whether it was contacted on or after the UTC day of ``since`` (in Redis,
    or in the file cleanups moved the history to)."""
    if not uids:
        return []
    days = last_days(redis, list(uids))
    archived = history_archive().read()  # after Redis: see c2b.delivery.history_archive
    if archived is not None:
        days = np.maximum(days, archived.last_days(np.frombuffer(b"".join(map(uid_key, uids)), dtype="<u8")))
    return ((days > 0) & (days >= epoch_day(since))).tolist()  # 0: no record


def contacted_since_array(redis: Any, uids: pa.Array, since: datetime, *,
                          key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS,
                          legacy_of: Callable[[int], str] | None = legacy_bucket_key,
                          legacy_buckets: int = LEGACY_BUCKETS) -> np.ndarray:
    """Return :func:`contacted_since` for an Arrow string array (no nulls), as a numpy bool mask.

    The extract's version: buckets come from the vectorised ``shard_indexes_arrow`` (the same
    formula as ``shard_index``) and uid keys from the int64 values when the uids are integers, so
    a batch costs one ``EVALSHA`` per :data:`LOOKUP_KEYS` buckets (per slot on a cluster),
    pipelined, and no per-row hash.
    """
    n = len(uids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    where = shard_indexes_arrow(uids, buckets).astype(np.int64)
    days = last_days(redis, uids.to_pylist(), key_of=key_of, buckets=buckets, legacy_of=legacy_of,
                     legacy_buckets=legacy_buckets, keys=uid_keys_arrow(uids), where=where)
    return (days > 0) & (days >= epoch_day(since))  # 0: no record


def history_size(redis: Any, *, key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS) -> list[int]:
    """Return the users recorded in each bucket of a history (records, not counting the legacy hashes)."""
    sizes: list[int] = []
    for start in range(1, buckets + 1, 2048):
        pipe = redis.pipeline(transaction=False)
        for b in range(start, min(start + 2048, buckets + 1)):
            pipe.strlen(key_of(b))
        sizes += [int(n) // RECORD for n in pipe.execute()]
    return sizes


def prune_contacts(redis: Any, before: datetime, scan_count: int = 1000) -> int:
    """Delete contact records (and legacy fields) older than the UTC day of ``before``; return how many."""
    floor = epoch_day(before)

    def prune(key: str) -> Callable[[Any], None]:
        return lambda pipe: pipe.eval(_PRUNE, 1, key, floor)

    calls = [(bucket_key(b), prune(bucket_key(b))) for b in range(1, BUCKETS + 1)]
    deleted = 0
    for i in range(0, len(calls), 1024):
        deleted += sum(int(n) for n in run_scripts(redis, calls[i:i + 1024]))
    for bucket in range(1, LEGACY_BUCKETS + 1):
        key = legacy_bucket_key(bucket)
        old = [field for field, day in redis.hscan_iter(key, count=scan_count) if int(day) < floor]
        for i in range(0, len(old), 1000):
            deleted += int(redis.hdel(key, *old[i:i + 1000]))
    return deleted


def history_archive():  # -> c2b.delivery.history_archive.HistoryArchive
    """Where cleanups move the contact history: ``<data url>/contacts/contacts.history``."""
    from c2b import storage
    from c2b.delivery.history_archive import HistoryArchive

    return HistoryArchive("contact history", storage.root() / "contacts" / "contacts.history", bucket_key, BUCKETS,
                          DEFAULT_TTL_DAYS, "c2b:history-move:{contacts}")
