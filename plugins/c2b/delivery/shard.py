"""Deliver one shard of a run: page through it, send every touch once, remember what was sent.

The parts, each in its own module:

- :mod:`c2b.delivery.work` turns a page of users into items, one per (touch, uid), and renders
  their messages;
- :mod:`c2b.delivery.triage` decides per page what to send, skip or hold back (and why): ledger
  states, then a list of checks (quiet hours, frequency cap, rendering);
- :mod:`c2b.delivery.loop` keeps up to ``concurrency`` requests in flight (a sliding window, no page
  barrier) through a :mod:`c2b.delivery.senders` sender, and watches the kill switch;
- :mod:`c2b.delivery.recorder` writes outcomes and moves the checkpoint in batches;
- :mod:`c2b.delivery.modes`: a real delivery or a dry run, the strategy that picks the above.

Why it looks like this:

- *Exactly once.* Every (touch, uid) has a ledger entry (:mod:`c2b.delivery.ledger`; in the main pass a
  record in its page's record string, by position): ``p`` is written for a whole page in one call
  before its sends, ``s`` or ``f:<reason>`` after, in batched atomic calls from one recorder thread
  (one script call per page per flush, not one round trip or Lua loop of Redis calls per message). A
  retried task skips final entries and re-sends ``p`` ones with the same idempotency key, so a
  receiver that honours the key sees
  each message once, even after kill -9. A request keeps its slot of the window until its outcomes
  are in the ledger, so what a crash leaves sent but unrecorded (sent again by the retry) is at
  most the window: ``concurrency`` requests (``docs/delivery-guarantees.md``).
- *Resumable.* The checkpoint is the start of the first page not completely recorded; a retry
  reads from there instead of from rank 0. The ledger counts its pending entries, so after a full
  pass a shard knows in one read whether anything is still unaccounted for (an entry no page or
  queue brings back); it then re-sends those too, with their keys, before it reports done.
- *Stoppable.* The kill switch is checked before a page is read, before it is handed to the loop
  and every 20 ms while waiting for room; when it trips, requests not yet started are dropped
  (their entries stay pending for a resume) and those in flight finish.
- *Polite.* Per-channel and per-plan rate limits are shared by every worker through Redis
  (:mod:`c2b.delivery.controls.rate_limit`); the frequency cap and quiet hours are triage checks.
  Users outside their hours are parked in the shard's deferred queue and sent when their hours
  open (the Airflow task reschedules itself for then, see ``c2b.airflow.resources.deliver_shard``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from c2b.channels.base import Channel
from c2b.delivery.controls.frequency_cap import rules_of
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.controls.rate_limit import Limits, RateLimiter
from c2b.delivery.histories import HistoryBatch, write_shard_histories
from c2b.delivery.inflight import InFlight
from c2b.delivery.ledger import ShardLedger
from c2b.delivery.loop import SendLoop
from c2b.delivery.modes import DeliveryMode, DryRunMode, LiveMode
from c2b.delivery.reentry import record_entries, record_sends
from c2b.delivery.senders import RetryPolicy
from c2b.delivery.stats import ShardStats
from c2b.delivery.work import Item, PageWork, WorkBuilder, idempotency_key
from c2b.plan.model import Plan
from c2b.store.redis_retry import with_redis_retry
from c2b.store.shards import AttrReader, ShardKeys, StoreError, read_layout, read_page

log = logging.getLogger(__name__)

AHEAD_MESSAGES = 5000  # messages waiting for a send slot at most (+ one page and those in flight)

__all__ = ["RetryPolicy", "ShardDelivery", "ShardStats", "idempotency_key"]


class ShardDelivery:
    """Deliver one shard of one run of a plan."""

    def __init__(self, redis: Any, plan: Plan, run_id: str, shard: int, channels: Mapping[str, Channel],
                 kill_switch: Callable[[], bool], retry: RetryPolicy | None = None,
                 only_touches: set[str] | None = None, dry_run: bool = False,
                 record_contacts: Callable[[Any, list[str], datetime], None] | None = None,
                 clock: Callable[[], float] = time.time, progress_every: float = 5.0,
                 history_batch: HistoryBatch | None = None) -> None:
        """``history_batch``: where the shard's sent users go for the histories (a task's shards
        share one, :class:`c2b.delivery.histories.HistoryBatch`); none: written at the shard's end."""
        self.redis = redis
        self.history_batch = history_batch
        self.plan = plan
        self.keys = ShardKeys(plan.id, run_id, shard)
        self.kill_switch = kill_switch
        self.progress_every = progress_every
        self.clock = clock
        self.stats = ShardStats(shard)
        window = SendWindow.of(getattr(plan, "window", None))
        self.builder = WorkBuilder(plan, run_id, window, clock, only_touches, channels)
        self.ledger = ShardLedger(redis, self.keys, ckpt_ttl=int(plan.delivery.key_ttl_hours * 3600),
                                  touches=[t.name for t in plan.touches])
        self.mode: DeliveryMode
        if dry_run:  # the ledger is never read or written
            self.mode = DryRunMode(channels, self.builder, self.stats)
        else:
            if record_contacts is None:  # the cross-plan contact record (c2b.delivery.contacts), unless a test swaps it
                from c2b.delivery.contacts import record_contacts as default_contacts

                record_contacts = default_contacts
            # + the plan's own history, for re-entry; both written at the end of the attempt
            # (c2b.delivery.histories), not as each message is recorded
            self._record_histories = record_sends(plan, record_contacts)
            self.mode = LiveMode(redis, self.ledger, channels, _limits(redis, plan, channels), retry or RetryPolicy(),
                                 self.builder, window, rules_of(plan), clock, self.stats)
        self.log_rows: Any = None  # the delivery log's rows (a list or an Arrow table), read at the end
        self._started = self._last_log = time.monotonic()
        self._attrs: AttrReader | None = None  # the shard's template attributes, from the run's meta
        self._batch = max((int(getattr(c, "batch_size", 1) or 1) for c in channels.values()), default=1)

    # -- the shard ----------------------------------------------------------------------------
    def run(self, page_size: int, concurrency: int) -> ShardStats:
        """Deliver the shard from its checkpoint, then its due deferred users; return the stats."""
        started = self._started = time.monotonic()
        st = self.stats
        cursor = self.mode.start_cursor()
        if cursor:
            log.info("shard %s: resuming from checkpoint at rank %s", st.shard, cursor)
        from c2b.process_memory import phase_peak

        phase_peak(f"shard {st.shard} before")
        self._drive(page_size, concurrency, lambda loop: self._main_passes(loop, cursor, page_size))
        phase_peak(f"shard {st.shard} main pass")
        if self.mode.resumable and not st.stopped:
            # Every send of this attempt is recorded by now, so a pending entry left is nobody's:
            # an attempt ended without recording it behind a checkpoint that had moved on.
            orphans = with_redis_retry(self.ledger.pending_count)
            if orphans > 0:
                log.warning("shard %s: %s messages still pending after a full pass; re-sending them with "
                            "their idempotency keys", st.shard, orphans)
                st.attempt["orphans"] += orphans
                self._drive(page_size, concurrency, lambda loop: self._orphan_pass(loop, page_size))
        if self.mode.resumable:  # a real delivery: its sends (all attempts') go to the histories
            self.log_rows = write_shard_histories(self.redis, self.plan, self.keys.run_id, st.shard,
                                                  self._record_histories, datetime.now(UTC),
                                                  int(self.plan.delivery.key_ttl_hours * 3600),
                                                  self.history_batch)
            phase_peak(f"shard {st.shard} histories")
        st.seconds = time.monotonic() - started
        self.mode.finish(st)
        self._progress(force=True)
        log.info("shard %s %s: %s", st.shard, "STOPPED by " + st.stop_reason if st.stopped else "done",
                 {k: v for k, v in sorted(st.counts.items())})
        return st

    def _drive(self, page_size: int, concurrency: int, passes: Callable[[SendLoop], None]) -> None:
        """Run ``passes`` with a send window and a page book; return once all is sent and recorded."""
        sender, book = self.mode.open()
        # Read-ahead counted in messages, not requests: every message prepared ahead has a pending
        # ledger entry, so batch requests (100 messages each) must not multiply what the hash holds.
        backlog = max(1, min(max(concurrency, page_size), AHEAD_MESSAGES // self._batch))
        sends = InFlight(concurrency, backlog=backlog, name=f"shard{self.stats.shard}-send")
        try:
            try:
                passes(SendLoop(sends, sender, self.kill_switch, self.stats, book, self._progress))
            finally:
                sends.close(sender.aclose)
        finally:
            book.close()
        if sends.error is not None:
            raise sends.error

    def _main_passes(self, loop: SendLoop, cursor: int, page_size: int) -> None:
        """The shard's audience from the checkpoint page by page, then its deferred users."""
        st = self.stats
        while not loop.failing():
            if loop.killed():
                break
            uids: list[str] = with_redis_retry(partial(read_page, self.redis, self.keys, cursor, page_size))
            if not uids:
                break
            work = self._work(uids, cursor)
            if work.held_out and self.mode.resumable:  # a real delivery: control users enter the plan
                with_redis_retry(partial(record_entries, self.plan, self.redis, work.held_out, datetime.now(UTC)))
            go = self.mode.triage(work)
            loop.book.open_page(cursor, cursor + len(uids), len(go), len(uids), work.holdout)
            st.attempt["pages"] += 1
            st.attempt["users"] += len(uids)
            cursor += len(uids)
            if not loop.dispatch(go):
                break
            loop.progress()
        if not self.mode.resumable:
            return
        # Deferred pass: first what a crashed attempt had picked up from the queue, then users
        # whose send hours have opened since they were parked.
        leftover = with_redis_retry(self.ledger.picked_up) if loop.may_continue() else []
        for i in range(0, len(leftover), page_size):
            if not loop.may_continue() or loop.killed():
                break
            if not loop.dispatch(self._deferred_items(leftover[i:i + page_size])):
                break
        while loop.may_continue():
            fields = with_redis_retry(lambda: self.ledger.due(self.clock(), page_size))
            if not fields or loop.killed():
                break
            # Every field leaves the due range here (picked up, re-parked or final), so the loop ends.
            if not loop.dispatch(self._deferred_items(fields)):
                break
            loop.progress()

    def _orphan_pass(self, loop: SendLoop, page_size: int) -> None:
        """Re-send pending entries no page or queue will bring back (same keys: sent once)."""
        fields = with_redis_retry(self.ledger.pending_fields)
        for i in range(0, len(fields), page_size):
            if not loop.may_continue() or loop.killed():
                break
            if not loop.dispatch(self._deferred_items(fields[i:i + page_size])):
                break
            loop.progress()

    # -- turning uids into work ---------------------------------------------------------------
    def _work(self, uids: Sequence[str], page: int, wanted: Mapping[str, set[str]] | None = None) -> PageWork:
        """Items of ``uids``: a page read at rank ``page`` (its attributes by position), or with
        ``page == -1`` uids from the ledger in any order (their attributes by uid)."""
        if self._attrs is None:  # the load's layout (c2b.store.shards), read once; none is an error
            layout = with_redis_retry(lambda: read_layout(self.redis, self.keys.plan_id, self.keys.run_id))
            self._attrs = AttrReader(self.redis, self.keys, layout)
        reader = self._attrs
        if page >= 0:
            stored = with_redis_retry(lambda: reader.page(page, len(uids)))
        else:
            stored = with_redis_retry(lambda: reader.by_uid(uids))
        if len(stored) != len(uids):
            raise StoreError(f"shard {self.keys.shard}: {len(stored)} attribute rows for {len(uids)} members "
                             f"at rank {page}: the shard changed under the delivery")
        return self.builder.page(uids, dict(zip(uids, stored, strict=True)), page, wanted)

    def _deferred_items(self, fields: list[str]) -> list[Item]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for f in fields:
            touch, _, uid = f.partition("|")
            wanted[uid].add(touch)
        return self.mode.triage(self._work(list(wanted), -1, wanted), deferred_pass=True)

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.progress_every:
            return
        self._last_log = now
        st = self.stats
        took = max(now - self._started, 1e-9)
        sent, failed = self.mode.recorded(st)
        log.info("shard %s: %s pages, %s users, %s sent (%.0f/s), %s failed, %s deferred, %s re-sent",
                 st.shard, st.attempt["pages"], st.attempt["users"], sent, sent / took,
                 failed, st.attempt["deferred_now"], st.attempt["resent"])


def _limits(redis: Any, plan: Plan, channels: Mapping[str, Channel]) -> dict[str, Limits]:
    """Rate limits per touch: its channel connection's and the plan's, shared via Redis."""
    plan_rate = getattr(plan.delivery, "rate_limit", None)
    plan_limiter = RateLimiter(redis, f"plan:{plan.id}", plan_rate) if plan_rate else None
    out = {}
    for name, ch in channels.items():
        limiters = []
        if ch.rate_limit:
            conn = ch.config.conn_id or f"{ch.name}:{plan.id}:{name}"
            limiters.append(RateLimiter(redis, f"channel:{conn}", ch.rate_limit, ch.burst))
        if plan_limiter:
            limiters.append(plan_limiter)
        out[name] = Limits(limiters)
    return out
