"""Write a shard's send outcomes to its ledger in batches, and move its checkpoint page by page.

Sends only hand outcomes over; one recorder thread turns many of them into one pipelined round
trip (the finalize script per batch, the checkpoint advance per finished page, contact records
and frequency-cap counts). A page's checkpoint moves only after every message of it is recorded.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from c2b.channels.base import Outcome
from c2b.delivery.controls.frequency_cap import FrequencyCap
from c2b.delivery.ledger import SENT, Change, ShardLedger
from c2b.delivery.work import Item
from c2b.store.redis_retry import with_redis_retry


class PageBook(Protocol):
    """Where pages handed to the send loop are booked (the checkpoint, or only counters)."""

    error: BaseException | None

    def open_page(self, start: int, end: int, outstanding: int, users: int, counters: dict[str, int]) -> None: ...

    def close(self) -> None: ...


@dataclass
class PageRecord:
    """A page handed to the send loop and not yet fully recorded (its checkpoint waits for it)."""

    start: int  # rank of its first user
    end: int  # rank after its last user
    outstanding: int  # messages sent from it whose outcome is not recorded yet
    users: int
    counters: dict[str, int]  # e.g. holdout counts, added to the checkpoint's totals with the page


class Recorder:
    """Record outcomes from one thread: send jobs hand them over, this thread writes them in batches."""

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
        self._pages: dict[int, PageRecord] = {}
        self._order: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self.error: BaseException | None = None
        self.done: Counter[str] = Counter() if done is None else done  # sent / failed recorded
        self._thread = threading.Thread(target=self._loop, name="c2b-recorder", daemon=True)
        self._thread.start()

    def open_page(self, start: int, end: int, outstanding: int, users: int, counters: dict[str, int]) -> None:
        """Announce a page: its checkpoint moves once ``outstanding`` outcomes of it are recorded."""
        with self._lock:
            self._pages[start] = PageRecord(start, end, outstanding, users, counters)
            self._order.append(start)
        if outstanding == 0:
            self._wake.set()

    def add(self, items: Sequence[Item], outcomes: Sequence[Outcome]) -> None:
        """Hand over the outcomes of one request (any thread)."""
        with self._lock:
            self._buffer.extend(zip(items, outcomes, strict=True))
            big = len(self._buffer) >= self.flush_at
        if big:
            self._wake.set()

    def close(self) -> None:
        """Flush everything and stop; raise the first error the thread met."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        if self.error is not None:
            raise self.error

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_every)
            self._wake.clear()
            closing = self._closing
            try:
                self._flush()
            except BaseException as exc:  # noqa: BLE001 (surfaced to the send loop, which fails the task)
                self.error = exc
                return
            if closing:
                return

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
            for item, _ in batch:
                if item.page >= 0:
                    self._pages[item.page].outstanding -= 1
            ready: list[PageRecord] = []
            while self._order and self._pages[self._order[0]].outstanding == 0:
                ready.append(self._pages.pop(self._order.pop(0)))
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
            for page in ready:
                self.ledger.advance(pipe, page.start, page.end, page.users, page.counters)
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
