"""Re-entry: whether a user may get a plan again, from the plan's own contact history.

The cross-plan history (:mod:`c2b.delivery.contacts`) says when a user was last messaged by
*any* plan and is kept 180 days; re-entry needs *this* plan's, kept as long as the rule needs
(``once`` means ever). Same layout (fixed-width records, 10 bytes a user), own keys::

    c2b:reentry:r:{<plan>:00001} .. c2b:reentry:r:{<plan>:16384}    STRING  (uid key, epoch day of the last send)

At 10M users of one plan a bucket holds ~610 records (~6 KB). The history is written when a
message is recorded sent (with the cross-plan contact record) and, for users of a control arm,
when their page is delivered (they entered the plan too: re-entry must treat both arms alike),
and read by the extract, which counts the users it turns away as ``not_reentered``. Each write
refreshes the bucket's TTL: ``once`` plans keep theirs :data:`ONCE_TTL_DAYS` after the last send,
others ``max(after_days + 1, 31)`` days. The run's ``cleanup`` moves the plan's records out of Redis into one file
per plan (:mod:`c2b.delivery.history_archive`); the extract reads both. Histories of the former hash layout
(``c2b:reentry:{<plan>:0001..4096}``) are still read while they exist (and expire unwritten).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from c2b.delivery import contacts
from c2b.delivery.contacts import RECORD, History, history_size, record_histories
from c2b.delivery.history_snapshot import HistoryLookup
from c2b.plan.model import Plan
from c2b.plan.policies import reentry_days
from c2b.store.shards import _tag_part

BUCKETS = 16384
LEGACY_BUCKETS = 4096
ONCE_TTL_DAYS = 3 * 365


def bucket_key(plan_id: str, bucket: int) -> str:
    """Return the Redis key of re-entry bucket ``bucket`` (1..BUCKETS) of ``plan_id``."""
    return "c2b:reentry:r:{" + f"{_tag_part(plan_id)}:{bucket:05d}" + "}"


def legacy_bucket_key(plan_id: str, bucket: int) -> str:
    """Return the key of bucket ``bucket`` (1..LEGACY_BUCKETS) of the former hash layout."""
    return "c2b:reentry:{" + f"{_tag_part(plan_id)}:{bucket:04d}" + "}"


def stored_users(redis: Any, plan_id: str) -> list[int]:
    """Return the users recorded in each bucket of the plan's history (the new layout's)."""
    return history_size(redis, key_of=partial(bucket_key, plan_id), buckets=BUCKETS)


def history_days(plan: Plan) -> int:
    """Return how long the plan's history is kept after a user's last send."""
    days = reentry_days(plan.reentry)
    return ONCE_TTL_DAYS if days is None else max(days + 1, 31)


def history_archive(plan_id: str, horizon_days: int = 0):  # -> c2b.delivery.history_archive.HistoryArchive
    """Where the plan's cleanups move its history: ``<data url>/reentry/<plan>.history``
    (``horizon_days``: :func:`history_days` of the plan, for a move)."""
    from c2b import storage
    from c2b.delivery.history_archive import HistoryArchive
    from c2b.settings import safe_name

    return HistoryArchive(f"re-entry history of plan {plan_id}",
                          storage.root() / "reentry" / f"{safe_name(plan_id)}.history", partial(bucket_key, plan_id),
                          BUCKETS, horizon_days, "c2b:history-move:{" + _tag_part(plan_id) + "}")


def record_sends(plan: Plan, also: Callable[[Any, list[str], datetime], None]
                 ) -> Callable[[Any, list[str], datetime], None]:
    """Return a contact recorder that writes the plan's history as well as calling ``also``.

    When ``also`` is the cross-plan :func:`~c2b.delivery.contacts.record_contacts`, both histories
    are written by the same script call(s) (:func:`~c2b.delivery.contacts.record_histories`).
    """
    own = History(partial(bucket_key, plan.id), BUCKETS, history_days(plan))
    if also is contacts.record_contacts:
        both = [History(contacts.bucket_key, contacts.BUCKETS, contacts.DEFAULT_TTL_DAYS), own]
        return lambda redis, uids, when: record_histories(redis, uids, when, both)

    def record(redis: Any, uids: list[str], when: datetime) -> None:
        also(redis, uids, when)
        record_histories(redis, uids, when, [own])

    return record


def record_entries(plan: Plan, redis: Any, uids: list[str], when: datetime) -> None:
    """Write the plan's history for users of its control arms, who entered the plan without a send.

    Re-entry must treat both arms alike: were only sent users recorded, the next run would turn
    away treated users but not their controls, and its split would no longer match the weights.
    """
    record_histories(redis, uids, when, [History(partial(bucket_key, plan.id), BUCKETS, history_days(plan))])


def forget_history(redis: Any, plan_id: str) -> int:
    """Delete plan ``plan_id``'s re-entry history (every bucket, and its file); return how many
    records it held.

    For the demo, which runs one plan again and again on the same users (``c2b demo`` says so
    when it does this); a real plan's history is what keeps it from re-sending too soon.
    """
    keys = [bucket_key(plan_id, b) for b in range(1, BUCKETS + 1)]
    legacy = [legacy_bucket_key(plan_id, b) for b in range(1, LEGACY_BUCKETS + 1)]
    held = 0
    for group, size in ((keys, "strlen"), (legacy, "hlen")):
        for i in range(0, len(group), 1024):
            pipe = redis.pipeline(transaction=False)
            for key in group[i:i + 1024]:
                getattr(pipe, size)(key)
                pipe.delete(key)
            counts = pipe.execute()[0::2]
            held += sum(int(n) // RECORD for n in counts) if size == "strlen" else sum(int(n) for n in counts)
    return held + history_archive(plan_id).forget()


class ReentryRule:
    """The extract's check: which uids of a batch got this plan too recently to get it again."""

    label = "not_reentered"

    def __init__(self, plan: Plan, redis: Any, now: datetime) -> None:
        days = reentry_days(plan.reentry)
        self.redis = redis
        self.key_of = partial(bucket_key, plan.id)
        self.legacy_of = partial(legacy_bucket_key, plan.id)
        # once: any record; N days: a send on one of the last N UTC days (N = 1: today only).
        self.since: datetime | None = datetime(1970, 1, 1, tzinfo=now.tzinfo) if days is None else \
            (now - timedelta(days=days - 1) if days > 0 else None)
        # Redis holds what runs not cleaned up yet wrote; the plan's file what earlier cleanups moved.
        self.lookup = HistoryLookup(redis, key_of=self.key_of, buckets=BUCKETS, legacy_of=self.legacy_of,
                                    legacy_buckets=LEGACY_BUCKETS, archive=history_archive(plan.id))
        if self.since is not None and redis is None:
            raise ValueError(f"plan {plan.id}: its re-entry rule needs the contact history in Redis: "
                             "pass redis= to extract_audience")

    @property
    def active(self) -> bool:
        return self.since is not None

    def matches(self, texts: pa.Array) -> np.ndarray:
        """Return a mask of the uids that may not enter again yet."""
        assert self.since is not None
        return self.lookup.matches(texts, self.since)
