"""Write a shard's send outcomes to its ledger in batches, and move its checkpoint page by page.

Sends only hand outcomes over; one recorder thread turns many of them into one pipelined round
trip (the finalize script per batch and page, the checkpoint advance per finished page, contact records
and frequency-cap counts). A page's checkpoint moves only after every message of it is recorded.

A send waits for its outcome to be in the ledger before it frees its slot of the in-flight window
(:meth:`Recorder.record`). That is what bounds repeats after a crash: at any moment, the messages
sent but not recorded (the ones a retry sends again, because they are still pending) are at most
the window, ``concurrency`` requests. Without the wait, sends went on while outcomes sat in the
buffer (10 ms of them, or a whole Redis outage's worth) and a retry repeated all of those. The
recorder flushes as soon as an outcome arrives; what arrives during a flush goes in the next one,
so the wait is about one Redis round trip and the batching stays.
"""

from __future__ import annotations

import asyncio
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
        self._waiters: list[Callable[[BaseException | None], None]] = []  # told once their outcomes are written
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

    def add(self, items: Sequence[Item], outcomes: Sequence[Outcome],
            written: Callable[[BaseException | None], None] | None = None) -> None:
        """Hand over the outcomes of one request (any thread).

        ``written`` is called (on the recorder thread) once they are in the ledger, with ``None``,
        or with the error that stopped the recorder.
        """
        with self._lock:
            error = self.error
            if error is None:
                self._buffer.extend(zip(items, outcomes, strict=True))
                if written is not None:
                    self._waiters.append(written)
            big = len(self._buffer) >= self.flush_at
        if error is not None and written is not None:
            written(error)
        elif big or written is not None:
            self._wake.set()

    async def record(self, items: Sequence[Item], outcomes: Sequence[Outcome]) -> None:
        """Hand over the outcomes of one request and wait until they are in the ledger (in the send loop).

        Raises the recorder's error if it stopped before writing them.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        def written(error: BaseException | None) -> None:  # on the recorder thread
            loop.call_soon_threadsafe(settle, error)

        self.add(items, outcomes, written)
        await done

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
                with self._lock:
                    self.error = exc
                    waiters, self._waiters = self._waiters, []
                for written in waiters:
                    written(exc)
                return
            if closing:
                return

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
            waiters, self._waiters = self._waiters, []
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
                changes.append(Change(item.field, SENT, item.vt, "sent", page=item.page))
            else:
                reason = (outcome.reason or "unknown").replace("\n", " ")[:160]
                changes.append(Change(item.field, f"f:{reason}", item.vt, "failed", page=item.page))

        def write() -> None:
            pipe = self.ledger.redis.pipeline(transaction=False)
            for i in range(0, len(changes), 500):
                self.ledger.finalize(pipe, changes[i:i + 500])
            for page in ready:
                self.ledger.advance(pipe, page.start, page.end, page.users, page.counters)
            pipe.execute()

        try:
            with_redis_retry(write)
        except BaseException:
            with self._lock:  # told of the error with the rest
                self._waiters[:0] = waiters
            raise
        for written in waiters:
            written(None)
        sent = [(item.day, item.uid, item.channel) for item, outcome in batch if outcome.status == "sent"]
        failed = [(item.day, item.uid, item.channel) for item, outcome in batch if outcome.status != "sent"]
        self.done["sent"] += len(sent)
        self.done["failed"] += len(failed)
        # Side records in other slots: best effort after the ledger (a crash here under-counts,
        # which errs towards contacting a user less, never more).
        if sent:
            with_redis_retry(lambda: self.on_contacts([uid for _, uid, _ in sent]))
            if not self.capped_plan:
                receipt = self.fcap.new_receipt()  # the same on a replay: counted once
                with_redis_retry(lambda: self.fcap.count_sends(sent, receipt))
        if failed and self.capped_plan:
            receipt = self.fcap.new_receipt()
            with_redis_retry(lambda: self.fcap.give_back(failed, receipt))
