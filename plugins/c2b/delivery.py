"""Deliver one shard of a run: page through it, send every touch once, remember what was sent.

Why it looks like this:
- *Sliding window, no page barrier.* Up to ``concurrency`` sends are in flight; a new page is read
  as soon as there is room, so one slow send never holds back the next page (the seed waited for a
  whole page behind a count-down latch).
- *Exactly once.* Every (touch, uid) has a ledger entry: ``p`` is written before the send, ``s`` or
  ``f:<reason>`` after. A retried task skips ``s`` and ``f`` and re-sends ``p`` with the same
  idempotency key, so a receiver that honours the key sees each message once, even after kill -9.
- *Resumable.* The checkpoint is the start of the first page not completely done; a retry reads
  from there instead of from rank 0.
- *Stoppable.* The kill switch is checked before every page.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from c2b.channels.base import Channel, Message, Outcome
from c2b.hashing import VariantPicker
from c2b.plan import Plan
from c2b.store import ShardKeys, read_attrs, read_page
from c2b.templates import compile_template

log = logging.getLogger(__name__)

SENT, PENDING = "s", "p"


def idempotency_key(plan_id: str, run_id: str, touch: str, uid: str) -> str:
    """Return the key every send of (plan, run, touch, uid) carries, the same on every retry."""
    return hashlib.sha256(f"{plan_id}\x1f{run_id}\x1f{touch}\x1f{uid}".encode("utf-8", "replace")).hexdigest()[:32]


@dataclass
class ShardStats:
    """Per-shard outcome counts, keyed ``variant|touch|outcome`` (JSON-able for XCom)."""

    shard: int
    users: int = 0
    pages: int = 0
    stopped: bool = False
    counts: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # reason -> n

    def to_xcom(self) -> dict[str, Any]:
        return {"shard": self.shard, "users": self.users, "pages": self.pages, "stopped": self.stopped,
                "counts": dict(self.counts), "failures": dict(self.failures)}


@dataclass
class RetryPolicy:
    """In-task retries of transient channel errors (5xx, timeouts), with exponential backoff."""

    attempts: int = 4
    first_delay: float = 0.2

    def send(self, channel: Channel, message: Message) -> Outcome:
        outcome = Outcome("retry", "not tried")
        for attempt in range(self.attempts):
            outcome = channel.send(message)
            if outcome.status != "retry":
                return outcome
            time.sleep(self.first_delay * 2**attempt)
        return Outcome("failed", f"gave up after {self.attempts} attempts: {outcome.reason}")


class ShardDelivery:
    """Deliver one shard of one run of a plan."""

    def __init__(self, redis: Any, plan: Plan, run_id: str, shard: int, channels: Mapping[str, Channel],
                 kill_switch: Callable[[], bool], retry: RetryPolicy | None = None,
                 only_touches: set[str] | None = None, dry_run: bool = False) -> None:
        self.redis = redis
        self.plan = plan
        self.run_id = run_id
        self.keys = ShardKeys(plan.id, run_id, shard)
        self.channels = channels
        self.kill_switch = kill_switch
        self.retry = retry or RetryPolicy()
        self.dry_run = dry_run
        self.picker = VariantPicker(plan.salt, plan.variant_weights)
        self.templates = {t.name: compile_template(t.template) for t in plan.touches}
        self.touches_by_variant = {
            v: [t for t in plan.touches_of(v) if only_touches is None or t.name in only_touches]
            for v in plan.variant_weights}
        self.stats = ShardStats(shard)
        self._lock = threading.Lock()

    # -- one page ---------------------------------------------------------------------------
    def _plan_page(self, uids: list[str]) -> list[tuple[Message, str]]:
        """Return the (message, ledger field) pairs of a page that still need sending."""
        attrs = read_attrs(self.redis, self.keys, uids)
        todo: list[tuple[str, str, Any, dict]] = []  # (uid, variant, touch, attrs)
        for uid, user_attrs in zip(uids, attrs):
            variant = self.picker.pick(uid.encode("utf-8"))
            touches = self.touches_by_variant[variant]
            if not touches:
                self.stats.counts[f"{variant}|-|holdout"] += 1
            todo.extend((uid, variant, t, user_attrs) for t in touches)
        if not todo:
            return []
        fields = [f"{t.name}|{uid}" for uid, _, t, _ in todo]
        states = self.redis.hmget(self.keys.ledger, fields)
        work: list[tuple[Message, str]] = []
        for (uid, variant, touch, user_attrs), fld, state in zip(todo, fields, states):
            state = state.decode() if isinstance(state, bytes) else state
            if state == SENT:
                self.stats.counts[f"{variant}|{touch.name}|sent_earlier"] += 1
                continue
            if state and state.startswith("f:"):
                self.stats.counts[f"{variant}|{touch.name}|failed_earlier"] += 1
                continue
            offer = touch.offer.model_dump(exclude_none=True) if touch.offer else None
            values = {**user_attrs, "uid": uid, "variant": variant, "offer": offer or {},
                      "assets": touch.assets, "plan": self.plan.id, "touch": touch.name}
            try:
                text = self.templates[touch.name].render(values)
            except Exception as exc:  # a missing attribute for one user must not stop the shard
                self._record(variant, touch.name, fld, Outcome("failed", f"template: {exc}"))
                continue
            work.append((Message(idempotency_key(self.plan.id, self.run_id, touch.name, uid),
                                 self.plan.id, self.run_id, touch.name, touch.channel, uid, variant,
                                 text, dict(touch.assets), offer), fld))
        if work and not self.dry_run:
            self.redis.hset(self.keys.ledger, mapping={f: PENDING for _, f in work})
            self.redis.expire(self.keys.ledger, self.ledger_ttl)
        return work

    ledger_ttl = 7 * 24 * 3600

    def _record(self, variant: str, touch: str, fld: str, outcome: Outcome) -> None:
        state = SENT if outcome.status == "sent" else f"f:{outcome.reason}"[:200]
        if not self.dry_run:
            self.redis.hset(self.keys.ledger, fld, state)
        with self._lock:
            self.stats.counts[f"{variant}|{touch}|{outcome.status if not self.dry_run else 'dry_run'}"] += 1
            if outcome.status == "failed":
                self.stats.failures[outcome.reason] += 1

    def _send(self, message: Message, fld: str) -> None:
        if self.dry_run:
            outcome = Outcome("sent")
        else:
            outcome = self.retry.send(self.channels[message.touch], message)
        self._record(message.variant, message.touch, fld, outcome)

    # -- the shard --------------------------------------------------------------------------
    def run(self, page_size: int, concurrency: int) -> ShardStats:
        """Deliver the shard from its checkpoint; return the stats of this attempt."""
        raw = self.redis.hget(self.keys.checkpoint, "next")
        cursor = int(raw) if raw else 0
        if cursor:
            log.info("shard %s: resuming from checkpoint at rank %s", self.stats.shard, cursor)
        window = threading.BoundedSemaphore(concurrency)
        done_pages: dict[int, int] = {}  # page start -> outstanding sends
        page_ends: dict[int, int] = {}
        ckpt_lock = threading.Lock()
        committed = [cursor]
        started = time.monotonic()

        def advance() -> None:
            # Move the checkpoint over every leading page that has no send in flight.
            while committed[0] in done_pages and done_pages[committed[0]] == 0:
                start = committed[0]
                del done_pages[start]
                committed[0] = page_ends.pop(start)
                self.redis.hset(self.keys.checkpoint, "next", committed[0])

        broken = threading.Event()

        def finished(start: int, f: Future) -> None:
            window.release()
            if f.exception() is not None:
                broken.set()  # never move the checkpoint past a send whose outcome is unknown
                return
            with ckpt_lock:
                done_pages[start] -= 1
                advance()

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"shard{self.stats.shard}") as pool:
            futures: list[Future] = []
            while not broken.is_set():
                if self.kill_switch():
                    self.stats.stopped = True
                    log.warning("shard %s: kill switch is on, stopping before rank %s", self.stats.shard, cursor)
                    break
                uids = read_page(self.redis, self.keys, cursor, page_size)
                if not uids:
                    break
                work = self._plan_page(uids)
                with ckpt_lock:
                    done_pages[cursor] = len(work)
                    page_ends[cursor] = cursor + len(uids)
                for message, fld in work:
                    window.acquire()
                    fut = pool.submit(self._send, message, fld)
                    fut.add_done_callback(lambda f, s=cursor: finished(s, f))
                    futures.append(fut)
                with ckpt_lock:
                    advance()
                self.stats.users += len(uids)
                self.stats.pages += 1
                cursor += len(uids)
                if self.stats.pages % 50 == 0:
                    rate = self.stats.users / max(time.monotonic() - started, 1e-9)
                    log.info("shard %s: %s pages, %s users, %.0f users/s", self.stats.shard,
                             self.stats.pages, self.stats.users, rate)
                futures = [f for f in futures if not f.done()]
            for f in futures:
                f.result()  # surface unexpected errors (e.g. Redis down) so Airflow retries
        log.info("shard %s done: %s users in %s pages, %.1fs, %s", self.stats.shard, self.stats.users,
                 self.stats.pages, time.monotonic() - started, dict(self.stats.counts))
        return self.stats
