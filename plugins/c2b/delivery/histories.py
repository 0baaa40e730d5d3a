"""Write a shard's sent users into the contact and re-entry histories once per attempt, in bulk.

The histories (:mod:`c2b.delivery.contacts`, :mod:`c2b.delivery.reentry`) keep fixed-width records
in 16,384 bucket strings each, and a write rewrites its bucket. Written as messages were recorded
(one flush of ~100 messages touches ~100 buckets), every message rewrote two buckets: at 10M users
(~6 KB buckets) about 55-75 us of Redis CPU a message, more than everything else together
(``bench/results/history_writes.md``). Written at the end of the shard's attempt, from the ledger,
the shard's users are grouped by bucket first: one rewrite per bucket per chunk of
:data:`CHUNK` users instead of one per message.

A deliver task of several shards (``delivery.shards_per_task``) hands each shard's sent users to
one :class:`HistoryBatch`, which writes them for up to :data:`BATCH_USERS` users at once: a bucket
is rewritten once per batch instead of once per shard. At 10M users a bucket is a ~6 KB string and
each rewrite costs Redis ~25-40 us (reading it into Lua, the new value, the ``SET``), so with ~76k
users a shard (128 shards) the per-shard writes were ~half of the audience Redis's CPU in the run.

What it costs in freshness: another plan's ``contacted_within_days`` exclusion (or this plan's
re-entry) sees a send once its shard's attempt (its task's batch) has ended, not the moment it was
recorded. What it
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
BATCH_USERS = 1_000_000  # sent users a HistoryBatch holds before it writes (~65 MB of uids)

Record = Callable[[Any, list[str], datetime], None]  # (redis, uids, when): c2b.delivery.reentry.record_sends(...)


def histories_key(keys: ShardKeys) -> str:
    """Return the key marking that the shard's sends are in the histories (same slot as its ledger)."""
    return f"c2b:{keys.tag}:hist"


class HistoryBatch:
    """Sent users of one task's shards, written to the histories together (see the module's doc).

    :meth:`add` takes a shard's sent users and writes the batch once it holds :data:`BATCH_USERS`;
    :meth:`flush` writes the rest (the task calls it when its shards are done, or failed). A shard
    is marked (:func:`histories_key`) only once its users are written, so a task that dies with a
    batch unwritten leaves its shards unmarked: its retry, or the run's ``cleanup``, writes them.
    """

    def __init__(self, redis: Any, plan: Plan, run_id: str, record: Record, ttl_seconds: int,
                 max_users: int = BATCH_USERS) -> None:
        self.redis = redis
        self.plan = plan
        self.run_id = run_id
        self.record = record
        self.ttl_seconds = ttl_seconds
        self.max_users = max_users
        self._shards: list[int] = []
        self._by_day: dict[int, tuple[datetime, list[str]]] = {}  # epoch day -> (latest time, its users)
        self._users = 0

    def add(self, shard: int, sent: list[str], now: datetime) -> None:
        """Hold ``sent`` (the shard's sent users, at ``now``); write the batch once it is full."""
        day = now.toordinal()  # a batch across midnight writes each day's users with their own day
        when, uids = self._by_day.get(day, (now, []))
        uids.extend(sent)
        self._by_day[day] = (max(when, now), uids)
        self._shards.append(shard)
        self._users += len(sent)
        if self._users >= self.max_users:
            self.flush()

    def flush(self) -> None:
        """Write the held users to the histories, then mark their shards."""
        if not self._shards:
            return
        batches, shards = list(self._by_day.values()), self._shards
        for when, uids in batches:
            unique = list(dict.fromkeys(uids))
            for i in range(0, len(unique), CHUNK * 20):
                chunk = unique[i:i + CHUNK * 20]
                with_redis_retry(lambda chunk=chunk, when=when: self.record(self.redis, chunk, when))  # type: ignore[misc]
        for shard in shards:
            key = histories_key(ShardKeys(self.plan.id, self.run_id, shard))
            with_redis_retry(lambda key=key: self.redis.set(key, "1", ex=self.ttl_seconds))  # type: ignore[misc]
        log.info("shards %s: %s sent users written to the contact and re-entry histories",
                 ", ".join(map(str, shards)), sum(len(u) for _, u in batches))
        self._shards, self._by_day, self._users = [], {}, 0


def write_shard_histories(redis: Any, plan: Plan, run_id: str, shard: int, record: Record, now: datetime,
                          ttl_seconds: int, batch: HistoryBatch | None = None) -> Any:
    """Record the shard's sent users (from its ledger) in the histories, or hand them to ``batch``;
    return the shard's delivery-log rows read on the way, so the delivery log need not read the
    ledger again: an Arrow table (:func:`c2b.results.delivery_log.shard_log_table`) or, for a
    shard that one does not read, a list of rows (:func:`c2b.results.delivery_log.shard_log_rows`)."""
    from c2b.results.delivery_log import shard_log_rows, shard_log_table

    bulk = shard_log_table(redis, plan, run_id, shard, now)
    rows: Any
    if bulk is not None:
        rows, sent = bulk
    else:
        rows = list(shard_log_rows(redis, plan, run_id, shard, now))
        sent = list(dict.fromkeys(row[4] for row in rows if row[5] == "sent"))
    if batch is not None:
        batch.add(shard, sent, now)
        return rows
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
