"""Deliver one shard of a run: page through it, send every touch once, remember what was sent.

Why it looks like this:

- *Sliding window, no page barrier.* Up to ``concurrency`` requests are in flight on one asyncio
  loop (:mod:`c2b.delivery.inflight`); a request starts the moment another ends, and the next page is read
  and checked while the current one is sending, so one slow send never holds back the rest (the
  seed waited for a whole page behind a count-down latch). The loop, not a thread per send, is
  what lets one worker keep a hundred sends in flight on little CPU. Channels that take batches
  get one request per ``batch_size`` messages.
- *Exactly once.* Every (touch, uid) has a ledger entry (:mod:`c2b.delivery.ledger`): ``p`` is written for a
  whole page in one call before its sends, ``s`` or ``f:<reason>`` after, in batched atomic calls
  from one recorder thread (not one round trip per message). A retried task skips final entries
  and re-sends ``p`` ones with the same idempotency key, so a receiver that honours the key sees
  each message once, even after kill -9.
- *Resumable.* The checkpoint is the start of the first page not completely recorded; a retry
  reads from there instead of from rank 0. The ledger counts its pending entries, so after a full
  pass a shard knows in one read whether anything is still unaccounted for (an entry no page or
  queue brings back); it then re-sends those too, with their keys, before it reports done.
- *Stoppable.* The kill switch is checked before a page is read, before it is handed to the loop
  and every 20 ms while waiting for room; when it trips, requests not yet started are dropped
  (their entries stay pending for a resume) and those in flight finish.
- *Polite.* Per-channel and per-plan rate limits are shared by every worker through Redis
  (:mod:`c2b.delivery.controls.rate_limit`); the frequency cap
  (:mod:`c2b.delivery.controls.frequency_cap`) and quiet hours
  (:mod:`c2b.delivery.controls.quiet_hours`) are applied per user before anything is sent. Users outside their
  hours are parked in the shard's deferred queue and sent when their hours open (the Airflow task
  reschedules itself for then, see ``c2b.airflow.resources.deliver_shard``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from c2b.channels.base import Channel, Message, Outcome
from c2b.delivery.controls.budget import OfferBudgets
from c2b.delivery.controls.frequency_cap import FrequencyCap
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.controls.rate_limit import Limits, RateLimiter
from c2b.delivery.inflight import InFlight
from c2b.delivery.ledger import CAPPED, DEFERRED, EXPIRED, PENDING, SENT, Change, ShardLedger
from c2b.delivery.reentry import record_sends
from c2b.hashing import VariantPicker
from c2b.plan.model import Plan, Touch
from c2b.plan.templates import compile_template
from c2b.store.redis_retry import with_redis_retry
from c2b.store.shards import ShardKeys, read_attrs, read_page

log = logging.getLogger(__name__)

def idempotency_key(plan_id: str, run_id: str, touch: str, uid: str) -> str:
    """Return the key every send of (plan, run, touch, uid) carries, the same on every retry."""
    return hashlib.sha256(f"{plan_id}\x1f{run_id}\x1f{touch}\x1f{uid}".encode("utf-8", "replace")).hexdigest()[:32]


@dataclass
class ShardStats:
    """What one shard reports: cumulative outcome counts over every attempt, plus this attempt's.

    ``counts`` is keyed ``variant|touch|outcome`` with outcomes ``sent``, ``failed``, ``capped``
    (frequency cap), ``expired`` (window closed), ``deferred`` (still waiting for quiet hours to
    end), and ``variant|-|holdout`` for control users.
    """

    shard: int
    users: int = 0
    pages: int = 0
    stopped: bool = False
    stop_reason: str = ""
    counts: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # reason -> n
    deferred: int = 0            # messages still waiting for their send hours
    deferred_total: int = 0      # messages that ever waited (sent later, or still waiting)
    next_due: float | None = None  # epoch seconds of the earliest waiting message
    attempt: Counter = field(default_factory=Counter)  # this attempt: sent, failed, resent, pages...
    seconds: float = 0.0

    def to_xcom(self) -> dict[str, Any]:
        due = datetime.fromtimestamp(self.next_due, UTC).isoformat() if self.next_due else None
        return {"shard": self.shard, "users": self.users, "pages": self.pages, "stopped": self.stopped,
                "stop_reason": self.stop_reason, "counts": dict(self.counts), "failures": dict(self.failures),
                "deferred": self.deferred, "deferred_total": self.deferred_total, "next_due": due,
                "attempt": dict(self.attempt), "seconds": round(self.seconds, 3)}


@dataclass
class RetryPolicy:
    """In-task retries of transient channel errors (5xx, timeouts), with jittered exponential backoff."""

    attempts: int = 4
    first_delay: float = 0.2
    max_delay: float = 5.0

    async def send(self, channel: Channel, messages: Sequence[Message], limits: Limits | None = None
                   ) -> list[Outcome]:
        """Send ``messages`` (one request, or a batch); return one final outcome per message."""
        outcomes: list[Outcome] = [Outcome("retry", "not tried")] * len(messages)
        todo = list(range(len(messages)))
        for attempt in range(self.attempts):
            batch = [messages[i] for i in todo]
            if limits:
                await limits.acquire_async(len(batch))
            answers = await channel.asend_batch(batch)
            again = []
            for i, outcome in zip(todo, answers, strict=True):
                outcomes[i] = outcome
                if outcome.status == "retry":
                    again.append(i)
            todo = again
            if not todo:
                return outcomes
            if attempt + 1 < self.attempts:
                delay = min(self.max_delay, self.first_delay * 2**attempt)
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        for i in todo:
            outcomes[i] = Outcome("failed", f"gave up after {self.attempts} attempts: {outcomes[i].reason}")
        return outcomes


@dataclass
class Item:
    """One (touch, uid) on its way: ledger field, counters, the message, and its page."""

    field: str
    variant: str
    touch: str
    uid: str
    day: str
    page: int  # start rank of its page; -1 for the deferred pass (no checkpoint)
    message: Message | None = None

    @property
    def vt(self) -> str:
        return f"{self.variant}|{self.touch}"


class Recorder:
    """Write outcomes to the ledger in batches from one thread, and move the checkpoint.

    Send threads only append to a buffer; this thread turns many outcomes into one pipelined round
    trip (finalize script per batch, checkpoint advance per finished page, contact records and
    frequency-cap counts). A page's checkpoint moves only after every message of it is recorded.
    """

    def __init__(self, ledger: ShardLedger, fcap: FrequencyCap, capped_plan: bool,
                 on_contacts: Callable[[list[str]], None], flush_every: float = 0.01, flush_at: int = 64,
                 done: Counter[str] | None = None) -> None:
        self.ledger = ledger
        self.fcap = fcap
        self.capped_plan = capped_plan
        self.on_contacts = on_contacts
        self.flush_every = flush_every
        self.flush_at = flush_at
        self._buffer: list[tuple[Item, Outcome]] = []
        self._pages: dict[int, list[Any]] = {}  # start -> [end, outstanding, users, counters]
        self._order: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self.error: BaseException | None = None
        self.done: Counter[str] = Counter() if done is None else done  # sent / failed recorded
        self._thread = threading.Thread(target=self._loop, name="c2b-recorder", daemon=True)
        self._thread.start()

    def open_page(self, start: int, end: int, outstanding: int, users: int, counters: dict[str, int]) -> None:
        with self._lock:
            self._pages[start] = [end, outstanding, users, counters]
            self._order.append(start)
        if outstanding == 0:
            self._wake.set()

    def add(self, items: Sequence[Item], outcomes: Sequence[Outcome]) -> None:
        with self._lock:
            self._buffer.extend(zip(items, outcomes, strict=True))
            big = len(self._buffer) >= self.flush_at
        if big:
            self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_every)
            self._wake.clear()
            closing = self._closing
            try:
                self._flush()
            except BaseException as exc:  # noqa: BLE001 (surfaced to the dispatcher, which fails the task)
                self.error = exc
                return
            if closing:
                return

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
            for item, _ in batch:
                if item.page >= 0:
                    self._pages[item.page][1] -= 1
            ready = []
            while self._order and self._pages[self._order[0]][1] == 0:
                start = self._order.pop(0)
                ready.append((start, *self._pages.pop(start)))
        if not batch and not ready:
            return
        changes = []
        for item, outcome in batch:
            if outcome.status == "sent":
                changes.append(Change(item.field, SENT, item.vt, "sent"))
            else:
                reason = (outcome.reason or "unknown").replace("\n", " ")[:160]
                changes.append(Change(item.field, f"f:{reason}", item.vt, "failed"))

        def write() -> None:
            pipe = self.ledger.redis.pipeline(transaction=False)
            for i in range(0, len(changes), 500):
                self.ledger.finalize(pipe, changes[i:i + 500])
            for start, end, _left, users, counters in ready:
                self.ledger.advance(pipe, start, end, users, counters)
            pipe.execute()

        with_redis_retry(write)
        sent = [(item.day, item.uid) for item, outcome in batch if outcome.status == "sent"]
        failed = [(item.day, item.uid) for item, outcome in batch if outcome.status != "sent"]
        self.done["sent"] += len(sent)
        self.done["failed"] += len(failed)
        # Side records in other slots: best effort after the ledger (a crash here under-counts,
        # which errs towards contacting a user less, never more).
        if sent:
            with_redis_retry(lambda: self.on_contacts([uid for _, uid in sent]))
            if not self.capped_plan:
                receipt = self.fcap.new_receipt()  # the same on a replay: counted once
                with_redis_retry(lambda: self.fcap.take(((d, u, 1) for d, u in sent), receipt))
        if failed and self.capped_plan:
            receipt = self.fcap.new_receipt()
            with_redis_retry(lambda: self.fcap.give_back(failed, receipt))

    def close(self) -> None:
        """Flush everything and stop; raise the first error the thread met."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


class Dispatcher:
    """One send window of a shard: hands pages to the loop, watches the kill switch and errors."""

    def __init__(self, shard: ShardDelivery, sends: InFlight, recorder: Recorder | None) -> None:
        self.shard = shard
        self.sends = sends
        self.recorder = recorder

    def killed(self) -> bool:
        sd = self.shard
        if with_redis_retry(sd.kill_switch):
            sd.stats.stopped = True
            sd.stats.stop_reason = getattr(sd.kill_switch, "reason", "") or "kill switch"
            self.sends.drop_waiting()  # what has not started stays pending in the ledger for a resume
            return True
        return False

    def failing(self) -> bool:
        return self.sends.error is not None or bool(self.recorder and self.recorder.error)

    def dispatch(self, items: list[Item]) -> bool:
        """Hand a page's requests to the send loop; return False when the shard must stop."""
        # While the window is full, look at the switch every 20 ms: sends keep starting from the
        # backlog meanwhile, so this bounds what starts after a flip (~20 ms worth).
        while not self.sends.wait_for_room(timeout=0.02):
            if self.failing() or self.killed():
                return False
        # Checked again right before handing the page over: the wait may have been long.
        if self.failing() or self.killed():
            return False
        sd = self.shard
        self.sends.submit([partial(sd._send, request, self.recorder) for request in sd._requests(items)])
        return True

    def progress(self) -> None:
        self.shard._progress()


class ShardDelivery:
    """Deliver one shard of one run of a plan."""

    def __init__(self, redis: Any, plan: Plan, run_id: str, shard: int, channels: Mapping[str, Channel],
                 kill_switch: Callable[[], bool], retry: RetryPolicy | None = None,
                 only_touches: set[str] | None = None, dry_run: bool = False,
                 record_contacts: Callable[[Any, list[str], datetime], None] | None = None,
                 clock: Callable[[], float] = time.time, progress_every: float = 5.0) -> None:
        self.redis = redis
        self.plan = plan
        self.run_id = run_id
        self.keys = ShardKeys(plan.id, run_id, shard)
        self.channels = channels
        self.kill_switch = kill_switch
        self.retry = retry or RetryPolicy()
        self.dry_run = dry_run
        self.clock = clock
        self.progress_every = progress_every
        self.picker = VariantPicker(plan.salt, plan.variant_weights)
        self.touches: dict[str, Touch] = {t.name: t for t in plan.touches}
        self.templates = {t.name: compile_template(t.template) for t in plan.touches}
        self.assets: dict[str, dict[str, str]] = {t.name: {str(k): v for k, v in t.assets.items()}
                                                   for t in plan.touches}
        self.offers = {t.name: (t.offer.model_dump(exclude_none=True) if t.offer else None) for t in plan.touches}
        self.touches_by_variant = {
            v: [t for t in plan.touches_of(v) if only_touches is None or t.name in only_touches]
            for v in plan.variant_weights}
        self.window = SendWindow.of(getattr(plan, "window", None))
        self.cap = getattr(plan.delivery, "frequency_cap", None)
        self.ledger = ShardLedger(redis, self.keys, ckpt_ttl=int(plan.delivery.key_ttl_hours * 3600))
        self.fcap = FrequencyCap(redis, self.cap)
        self.budgets = OfferBudgets(redis, plan, run_id)
        if record_contacts is None:  # the cross-plan contact record (c2b.delivery.contacts), unless a test swaps it
            from c2b.delivery.contacts import record_contacts as default_contacts

            record_contacts = default_contacts
        record_contacts = record_sends(plan, record_contacts)  # + the plan's own history, for re-entry
        self._record_contacts: Callable[[Any, list[str], datetime], None] = record_contacts
        self.limits = self._limits()
        self.stats = ShardStats(shard)
        self.done: Counter[str] = Counter()  # sent / failed recorded by this attempt
        self._started = self._last_log = time.monotonic()

    def _limits(self) -> dict[str, Limits]:
        """Rate limits per touch: its channel connection's and the plan's, shared via Redis."""
        plan_rate = getattr(self.plan.delivery, "rate_limit", None)
        plan_limiter = RateLimiter(self.redis, f"plan:{self.plan.id}", plan_rate) if plan_rate else None
        out = {}
        for name, ch in self.channels.items():
            limiters = []
            if ch.rate_limit:
                conn = ch.config.conn_id or f"{ch.name}:{self.plan.id}:{name}"
                limiters.append(RateLimiter(self.redis, f"channel:{conn}", ch.rate_limit, ch.burst))
            if plan_limiter:
                limiters.append(plan_limiter)
            out[name] = Limits(limiters)
        return out

    # -- turning uids into work ---------------------------------------------------------------
    def _items(self, uids: Sequence[str], page: int, wanted: Mapping[str, set[str]] | None = None
               ) -> tuple[list[Item], dict[str, dict[str, Any]], dict[str, int]]:
        """Return the (touch, uid) items of ``uids``, their attributes and holdout counters."""
        stored = with_redis_retry(lambda: read_attrs(self.redis, self.keys, list(uids)))
        attrs = dict(zip(uids, stored, strict=True))
        items: list[Item] = []
        holdout: Counter = Counter()
        now = datetime.fromtimestamp(self.clock(), UTC)
        for uid in uids:
            variant = self.picker.pick(uid.encode("utf-8", "replace"))
            touches = self.touches_by_variant[variant]
            if wanted is not None:
                touches = [t for t in touches if t.name in wanted.get(uid, ())]
            elif not touches:
                holdout[f"{variant}|-|holdout"] += 1
                continue
            day = self.window.local_day(now, attrs[uid].get("timezone"))
            items.extend(Item(f"{t.name}|{uid}", variant, t.name, uid, day, page) for t in touches)
        return items, attrs, dict(holdout)

    def _message(self, item: Item, attrs: dict[str, Any]) -> Message:
        touch = self.touches[item.touch]
        offer = self.offers[item.touch]
        values = {**attrs, "uid": item.uid, "variant": item.variant, "offer": offer or {},
                  "assets": touch.assets, "plan": self.plan.id, "touch": touch.name}
        text = self.templates[touch.name].render(values)
        return Message(idempotency_key(self.plan.id, self.run_id, touch.name, item.uid), self.plan.id,
                       self.run_id, touch.name, touch.channel, item.uid, item.variant, text,
                       dict(self.assets[touch.name]), offer)

    def _triage(self, items: list[Item], attrs: dict[str, dict[str, Any]], deferred_pass: bool = False) -> list[Item]:
        """Decide each item's fate before sending; return the items to send now (ledger ``p``).

        Final entries are skipped; pending ones (a previous attempt's) are re-sent unless the
        user's hours have closed; new ones (and, in the deferred pass, parked ones) pass quiet
        hours, the frequency cap and template rendering first. All decisions go to the ledger in
        one call before anything is sent.
        """
        if self.dry_run:
            out = []
            for it in items:
                try:
                    it.message = self._message(it, attrs[it.uid])
                    out.append(it)
                except Exception:
                    self.stats.counts[f"{it.vt}|dry_run_template_error"] += 1
            return out
        states = with_redis_retry(lambda: self.ledger.states([it.field for it in items]))
        now = self.clock()
        now_dt = datetime.fromtimestamp(now, UTC)
        resend: list[Item] = []
        fresh: list[Item] = []
        stale: list[str] = []
        changes: list[Change] = []
        opens: dict[str, datetime | None] = {}
        for it, state in zip(items, states, strict=True):
            if state == DEFERRED and not deferred_pass:
                self.stats.attempt["still_deferred"] += 1  # the deferred pass owns parked entries
                continue
            if state is not None and state not in (PENDING, DEFERRED):
                self.stats.attempt["skipped_final"] += 1
                if deferred_pass:
                    stale.append(it.field)
                continue
            if not self.window.always_open:
                if it.uid not in opens:
                    opens[it.uid] = self.window.next_open(now_dt, attrs[it.uid].get("timezone"))
                due = opens[it.uid]
                if due is None:
                    changes.append(Change(it.field, EXPIRED, it.vt, "expired"))
                    continue
                if due.timestamp() > now + 1:
                    changes.append(Change(it.field, DEFERRED, it.vt, "deferred", due.timestamp()))
                    continue
            (resend if state == PENDING else fresh).append(it)
        if stale:
            with_redis_retry(lambda: self.ledger.forget_deferred(stale))
        if self.cap is not None and fresh:
            want = Counter((it.day, it.uid) for it in fresh)
            receipt = self.fcap.new_receipt()  # the same on a replay: taken once
            granted = with_redis_retry(lambda: self.fcap.take(((d, u, n) for (d, u), n in want.items()), receipt))
            allowed = []
            for it in fresh:  # touches in plan order take the user's remaining slots first
                key = (it.day, it.uid)
                if granted.get(key, 0) > 0:
                    granted[key] -= 1
                    allowed.append(it)
                else:
                    changes.append(Change(it.field, CAPPED, it.vt, "capped"))
            fresh = allowed
        fresh = self.budgets.admit(fresh, changes, self._give_back_cap if self.cap is not None else None)  # type: ignore[arg-type, assignment]
        go: list[Item] = []
        for group, is_fresh in ((resend, False), (fresh, True)):
            for it in group:
                try:
                    it.message = self._message(it, attrs[it.uid])
                except Exception as exc:  # a missing attribute for one user must not stop the shard
                    changes.append(Change(it.field, f"f:template: {exc}"[:160], it.vt, "failed"))
                    continue
                go.append(it)
                if is_fresh:
                    changes.append(Change(it.field, PENDING, it.vt, "pending"))
        receipt = self.ledger.new_receipt()  # one per decision: a replay gets the first answer back
        applied = with_redis_retry(lambda: self.ledger.prepare(changes, receipt)) if changes else []
        mine = {c.field for c, ok in zip(changes, applied, strict=True) if ok and c.state == PENDING}
        resent = {it.field for it in resend}
        self.stats.attempt["resent"] += len(resend)
        self.stats.attempt["deferred_now"] += sum(1 for c, ok in zip(changes, applied, strict=True)
                                                 if ok and c.state == DEFERRED)
        # A fresh entry that changed under us (another attempt got there first) is not ours to send.
        return [it for it in go if it.field in resent or it.field in mine]

    def _give_back_cap(self, slots: list[tuple[str, str]]) -> None:
        receipt = self.fcap.new_receipt()  # the same on a replay: given back once
        with_redis_retry(lambda: self.fcap.give_back(slots, receipt))

    # -- sending -------------------------------------------------------------------------------
    def _requests(self, items: list[Item]) -> list[list[Item]]:
        """Group a page's items into requests: per touch, ``batch_size`` messages each."""
        by_touch: dict[str, list[Item]] = defaultdict(list)
        for it in items:
            by_touch[it.touch].append(it)
        out: list[list[Item]] = []
        for touch, its in by_touch.items():
            size = self.channels[touch].batch_size if not self.dry_run else len(its)
            out.extend(its[i:i + size] for i in range(0, len(its), size))
        return out

    async def _send(self, items: list[Item], recorder: Recorder | None) -> None:
        if self.dry_run:
            for it in items:
                self.stats.counts[f"{it.vt}|dry_run"] += 1
            return
        touch = items[0].touch
        outcomes = await self.retry.send(self.channels[touch], [it.message for it in items if it.message is not None],
                                         self.limits[touch])
        assert recorder is not None
        recorder.add(items, outcomes)

    # -- the shard ----------------------------------------------------------------------------
    def run(self, page_size: int, concurrency: int) -> ShardStats:
        """Deliver the shard from its checkpoint, then its due deferred users; return the stats."""
        started = self._started = time.monotonic()
        st = self.stats
        cursor = 0 if self.dry_run else with_redis_retry(self.ledger.checkpoint)
        if cursor:
            log.info("shard %s: resuming from checkpoint at rank %s", st.shard, cursor)
        self._drive(page_size, concurrency, partial(self._main_passes, cursor, page_size))
        if not (self.dry_run or st.stopped):
            # Every send of this attempt is recorded by now, so a pending entry left is nobody's:
            # an attempt ended without recording it behind a checkpoint that had moved on.
            orphans = with_redis_retry(self.ledger.pending_count)
            if orphans > 0:
                log.warning("shard %s: %s messages still pending after a full pass; re-sending them with "
                            "their idempotency keys", st.shard, orphans)
                st.attempt["orphans"] += orphans
                self._drive(page_size, concurrency, partial(self._orphan_pass, page_size))
        self._finish(started)
        self._progress(force=True)
        log.info("shard %s %s: %s", st.shard, "STOPPED by " + st.stop_reason if st.stopped else "done",
                 {k: v for k, v in sorted(st.counts.items())})
        return st

    def _drive(self, page_size: int, concurrency: int, passes: Callable[[Dispatcher], None]) -> None:
        """Run ``passes`` with a send window and a recorder; return once all is sent and recorded."""
        st = self.stats
        recorder = None if self.dry_run else Recorder(
            self.ledger, FrequencyCap(self.redis, self.cap), self.cap is not None,
            lambda uids: self._record_contacts(self.redis, uids, datetime.now(UTC)), done=self.done)
        sends = InFlight(concurrency, backlog=max(concurrency, page_size), name=f"shard{st.shard}-send")
        try:
            try:
                passes(Dispatcher(self, sends, recorder))
            finally:
                sends.close(self._close_channels)
        finally:
            if recorder:
                recorder.close()
        if sends.error is not None:
            raise sends.error

    def _main_passes(self, cursor: int, page_size: int, dispatcher: Dispatcher) -> None:
        """The shard's audience from the checkpoint page by page, then its deferred users."""
        st = self.stats
        while not dispatcher.failing():
            if dispatcher.killed():
                break
            uids: list[str] = with_redis_retry(partial(read_page, self.redis, self.keys, cursor, page_size))
            if not uids:
                break
            items, attrs, holdout = self._items(uids, cursor)
            go = self._triage(items, attrs)
            if dispatcher.recorder:
                dispatcher.recorder.open_page(cursor, cursor + len(uids), len(go), len(uids), holdout)
            else:
                st.counts.update(holdout)
            st.attempt["pages"] += 1
            st.attempt["users"] += len(uids)
            cursor += len(uids)
            if not dispatcher.dispatch(go):
                break
            dispatcher.progress()
        # Deferred pass: first what a crashed attempt had picked up from the queue, then users
        # whose send hours have opened since they were parked.
        leftover = with_redis_retry(self.ledger.picked_up) if self._may_continue(dispatcher.failing) else []
        for i in range(0, len(leftover), page_size):
            if not self._may_continue(dispatcher.failing) or dispatcher.killed():
                break
            if not dispatcher.dispatch(self._deferred_items(leftover[i:i + page_size])):
                break
        while self._may_continue(dispatcher.failing):
            fields = with_redis_retry(lambda: self.ledger.due(self.clock(), page_size))
            if not fields or dispatcher.killed():
                break
            # Every field leaves the due range here (picked up, re-parked or final), so the loop ends.
            if not dispatcher.dispatch(self._deferred_items(fields)):
                break
            dispatcher.progress()

    def _orphan_pass(self, page_size: int, dispatcher: Dispatcher) -> None:
        """Re-send pending entries no page or queue will bring back (same keys: sent once)."""
        fields = with_redis_retry(self.ledger.pending_fields)
        for i in range(0, len(fields), page_size):
            if not self._may_continue(dispatcher.failing) or dispatcher.killed():
                break
            if not dispatcher.dispatch(self._deferred_items(fields[i:i + page_size])):
                break
            dispatcher.progress()

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.progress_every:
            return
        self._last_log = now
        st = self.stats
        took = max(now - self._started, 1e-9)
        sent = st.counts.total() if self.dry_run else self.done["sent"]
        log.info("shard %s: %s pages, %s users, %s sent (%.0f/s), %s failed, %s deferred, %s re-sent",
                 st.shard, st.attempt["pages"], st.attempt["users"], sent, sent / took,
                 self.done["failed"], st.attempt["deferred_now"], st.attempt["resent"])

    def _may_continue(self, failing: Callable[[], bool]) -> bool:
        return not (self.dry_run or self.stats.stopped or failing())

    async def _close_channels(self) -> None:
        """Release what the channels hold in the send loop (their connections live there)."""
        for channel in self.channels.values():
            await channel.aclose()

    def _deferred_items(self, fields: list[str]) -> list[Item]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for f in fields:
            touch, _, uid = f.partition("|")
            wanted[uid].add(touch)
        items, attrs, _ = self._items(list(wanted), -1, wanted)
        return self._triage(items, attrs, deferred_pass=True)

    def _finish(self, started: float) -> None:
        st = self.stats
        st.seconds = time.monotonic() - started
        if self.dry_run:
            st.users, st.pages = st.attempt["users"], st.attempt["pages"]
            return
        counts, failures, extra = with_redis_retry(self.ledger.totals)
        st.counts = Counter(counts)
        st.failures = Counter(failures)
        st.users = extra.get("users", 0)
        st.pages = extra.get("pages", 0)
        st.deferred_total = extra.get("deferred_total", 0)
        st.deferred, st.next_due = with_redis_retry(self.ledger.waiting)
        st.attempt["deferred"] = st.deferred
