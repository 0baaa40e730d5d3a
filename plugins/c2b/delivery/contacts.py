"""Contact history: when each user was last messaged, for ``exclude: [{contacted_within_days: N}]``.

One key per user would mean millions of tiny keys; one hash for everyone would be a big key. So
users are spread over :data:`BUCKETS` hashes by the platform's shard formula
(``shard_index(uid, 1024)``), each field ``uid -> epoch day`` of the last contact::

    c2b:contacts:{0001} .. c2b:contacts:{1024}    HASH  uid -> days since 1970-01-01 (UTC)

Every command touches one key, so the layout works unchanged on Redis Cluster (the ``{...}`` hash
tag only pins each bucket to one slot). Each write refreshes the bucket's TTL, so the history of an
idle system expires; :func:`prune_contacts` drops fields older than a horizon from busy buckets.
The delivery step calls :func:`record_contacts` after each sent message (or page of messages).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from c2b.hashing import shard_index, shard_indexes_arrow, uid_bytes
from c2b.store.script_pipelines import run_scripts

BUCKETS = 1024
DEFAULT_TTL_DAYS = 180
_KEY = "c2b:contacts:{{{:04d}}}"

# Keep the later day when a field already holds one (writes may arrive out of order).
_RECORD_MAX = """
local day = tonumber(ARGV[1])
for i = 3, #ARGV do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if not old or old < day then redis.call('HSET', KEYS[1], ARGV[i], day) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #ARGV - 2
"""


def bucket_key(bucket: int) -> str:
    """Return the Redis key of contact bucket ``bucket`` (1..BUCKETS)."""
    return _KEY.format(bucket)


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


def record_contacts(redis: Any, uids: list[str], when: datetime, ttl_days: int = DEFAULT_TTL_DAYS, *,
                    key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS) -> None:
    """Record that ``uids`` were contacted at ``when`` (one script call per bucket, pipelined).

    ``key_of`` and ``buckets`` name another history with the same layout (a plan's own,
    :mod:`c2b.delivery.reentry`).
    """
    if not uids:
        return
    day = epoch_day(when)
    calls = []
    for bucket, members in _by_bucket(uids, buckets).items():
        key = key_of(bucket)
        args = (day, ttl_days * 86_400, *(b for _, b in members))
        # EVAL, not EVALSHA: no script cache to miss, in a pipeline or on a cluster node.
        calls.append((key, lambda pipe, key=key, args=args: pipe.eval(_RECORD_MAX, 1, key, *args)))
    run_scripts(redis, calls)


def contacted_since(redis: Any, uids: list[str], since: datetime) -> list[bool]:
    """Return, for each uid, whether it was contacted on or after the UTC day of ``since``."""
    if not uids:
        return []
    floor = epoch_day(since)
    out = [False] * len(uids)
    groups = _by_bucket(uids)
    pipe = redis.pipeline(transaction=False)
    for bucket, members in groups.items():
        pipe.hmget(bucket_key(bucket), [b for _, b in members])
    for members, days in zip(groups.values(), pipe.execute(), strict=True):
        for (i, _), day in zip(members, days, strict=True):
            if day is not None and int(day) >= floor:
                out[i] = True
    return out


def contacted_since_array(redis: Any, uids: pa.Array, since: datetime, *,
                          key_of: Callable[[int], str] = bucket_key, buckets: int = BUCKETS) -> np.ndarray:
    """Return :func:`contacted_since` for an Arrow string array (no nulls), as a numpy bool mask.

    The extract's version: buckets come from the vectorised ``shard_indexes_arrow`` (the same
    formula as ``shard_index``), so a batch costs one pipelined HMGET per bucket, no per-row hash.
    """
    n = len(uids)
    out = np.zeros(n, dtype=bool)
    if n == 0:
        return out
    where = shard_indexes_arrow(uids, buckets)
    order = np.argsort(where, kind="stable")
    ordered = where[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [n]))
    values = uids.take(pa.array(order)).to_pylist()
    pipe = redis.pipeline(transaction=False)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        pipe.hmget(key_of(int(ordered[a])), values[a:b])
    floor = epoch_day(since)
    hits: list[int] = []
    for a, days in zip(starts.tolist(), pipe.execute(), strict=True):
        hits.extend(a + j for j, day in enumerate(days) if day is not None and int(day) >= floor)
    out[order[hits]] = True
    return out


def prune_contacts(redis: Any, before: datetime, scan_count: int = 1000) -> int:
    """Delete contact fields older than the UTC day of ``before``; return how many were deleted."""
    floor = epoch_day(before)
    deleted = 0
    for bucket in range(1, BUCKETS + 1):
        key = bucket_key(bucket)
        old = [field for field, day in redis.hscan_iter(key, count=scan_count) if int(day) < floor]
        for i in range(0, len(old), 1000):
            deleted += int(redis.hdel(key, *old[i:i + 1000]))
    return deleted
