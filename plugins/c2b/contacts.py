"""Who was contacted when, across plans: the record behind "not contacted in the last N days".

Delivery calls :func:`record_contacts` after messages are sent; segment extraction reads it to
exclude recently contacted users. Layout (no big keys, cluster-safe): 1024 hashes
``c2b:contacted:{<bucket>}`` with ``bucket = shard_index(uid, 1024)``, field uid -> the epoch day
(days since 1970-01-01, UTC) of the latest contact. Each hash carries a TTL refreshed on write.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from c2b.hashing import shard_index

BUCKETS = 1024
TTL_SECONDS = 90 * 24 * 3600


def contacted_key(bucket: int) -> str:
    return "c2b:contacted:{" + str(bucket) + "}"


def epoch_day(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() // 86400)


def record_contacts(redis: Any, uids: list[str], when: datetime) -> None:
    """Record that ``uids`` were contacted on ``when``'s day (one pipelined round trip)."""
    if not uids:
        return
    day = epoch_day(when)
    by_bucket: dict[int, dict[str, int]] = defaultdict(dict)
    for uid in uids:
        by_bucket[shard_index(uid, BUCKETS)][uid] = day
    pipe = redis.pipeline(transaction=False)
    for bucket, mapping in by_bucket.items():
        key = contacted_key(bucket)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, TTL_SECONDS)
    pipe.execute()
