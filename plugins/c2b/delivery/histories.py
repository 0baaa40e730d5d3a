"""Write a shard's sent users into the contact and re-entry histories once per attempt, in bulk.

The histories (:mod:`c2b.delivery.contacts`, :mod:`c2b.delivery.reentry`) keep fixed-width records
in 16,384 bucket strings each, and a write rewrites its bucket. Written as messages were recorded
(one flush of ~100 messages touches ~100 buckets), every message rewrote two buckets: at 10M users
(~6 KB buckets) about 55-75 us of Redis CPU a message, more than everything else together
(``bench/results/history_writes.md``). Written at the end of the shard's attempt, from the ledger,
the shard's users are grouped by bucket first: one rewrite per bucket per chunk of
:data:`CHUNK` users instead of one per message.

What it costs in freshness: another plan's ``contacted_within_days`` exclusion (or this plan's
re-entry) sees a send once its shard's attempt has ended, not the moment it was recorded. What it
keeps: every sent user is written, whatever the attempt's end. The ledger says who was sent, so an
attempt killed before its end loses nothing: the next attempt writes the shard's sends, its own and
the earlier attempts' (the histories keep the later day of a user, so writing twice is harmless);
and a shard whose last attempt never reached its end (retries exhausted) is written by the run's
``cleanup`` task, which finds it without its :func:`histories_key` mark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from c2b.plan.model import Plan
from c2b.store.redis_retry import with_redis_retry
from c2b.store.shards import ShardKeys

log = logging.getLogger(__name__)

CHUNK = 50_000  # users per write: ~3 per bucket at 16,384 buckets

Record = Callable[[Any, list[str], datetime], None]  # (redis, uids, when): c2b.delivery.reentry.record_sends(...)


def histories_key(keys: ShardKeys) -> str:
    """Return the key marking that the shard's sends are in the histories (same slot as its ledger)."""
    return f"c2b:{keys.tag}:hist"


def write_shard_histories(redis: Any, plan: Plan, run_id: str, shard: int, record: Record, now: datetime,
                          ttl_seconds: int) -> list[tuple[Any, ...]]:
    """Record the shard's sent users (from its ledger) in the histories; return the shard's
    delivery-log rows read on the way (:func:`c2b.results.delivery_log.shard_log_rows`), so the
    delivery log need not read the ledger again."""
    from c2b.results.delivery_log import shard_log_rows

    rows = list(shard_log_rows(redis, plan, run_id, shard, now))
    sent = list(dict.fromkeys(row[4] for row in rows if row[5] == "sent"))
    for i in range(0, len(sent), CHUNK):
        chunk = sent[i:i + CHUNK]
        with_redis_retry(lambda chunk=chunk: record(redis, chunk, now))  # type: ignore[misc]
    with_redis_retry(lambda: redis.set(histories_key(ShardKeys(plan.id, run_id, shard)), "1", ex=ttl_seconds))
    log.info("shard %s: %s sent users written to the contact and re-entry histories", shard, len(sent))
    return rows


def write_missing_histories(redis: Any, plan: Plan, run_id: str, shards: int, record: Record, now: datetime,
                            ttl_seconds: int) -> list[int]:
    """Write the histories of every shard of the run without its mark (its last attempt did not
    end: a failed task, a worker lost for good); return those shards. For ``cleanup``, before the
    run's audience keys go."""
    missing = []
    for shard in range(1, shards + 1):
        if not with_redis_retry(lambda shard=shard: redis.exists(  # type: ignore[misc]
                histories_key(ShardKeys(plan.id, run_id, shard)))):
            write_shard_histories(redis, plan, run_id, shard, record, now, ttl_seconds)
            missing.append(shard)
    return missing


def forget_marks(redis: Any, plan: Plan, run_id: str, shards: int) -> None:
    """Delete the run's marks (``cleanup``, after :func:`write_missing_histories`): a cleared and
    re-run DAG run loads again, and its shards must mark their own attempts' ends."""
    keys = [histories_key(ShardKeys(plan.id, run_id, s)) for s in range(1, shards + 1)]
    pipe = redis.pipeline(transaction=False)
    for key in keys:  # one key a command: the marks live in their shards' slots on a cluster
        pipe.delete(key)
    with_redis_retry(pipe.execute)
