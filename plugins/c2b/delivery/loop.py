"""The send loop of one shard: pages of items in, requests through a sliding window of sends.

Up to ``concurrency`` requests are in flight on one asyncio loop (:mod:`c2b.delivery.inflight`);
a request starts the moment another ends, and the next page is read and triaged while the current
one is sending, so one slow send never holds back the rest. The loop watches the kill switch while
it waits for room and stops handing work over when a send or the recorder failed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from c2b.delivery.inflight import InFlight
from c2b.delivery.recorder import PageBook
from c2b.delivery.senders import Sender
from c2b.delivery.stats import ShardStats
from c2b.delivery.work import Item
from c2b.store.redis_retry import with_redis_retry


class SendLoop:
    """One send window of a shard: hands pages to the in-flight window, watches the kill switch and errors."""

    def __init__(self, sends: InFlight, sender: Sender, kill_switch: Callable[[], bool], stats: ShardStats,
                 book: PageBook, on_progress: Callable[[], None] = lambda: None) -> None:
        self.sends = sends
        self.sender = sender
        self.kill_switch = kill_switch
        self.stats = stats
        self.book = book
        self.on_progress = on_progress

    def killed(self) -> bool:
        """Return whether the kill switch is on; if so, drop the requests that have not started."""
        if with_redis_retry(self.kill_switch):
            self.stats.stopped = True
            self.stats.stop_reason = getattr(self.kill_switch, "reason", "") or "kill switch"
            self.sends.drop_waiting()  # what has not started stays pending in the ledger for a resume
            return True
        return False

    def failing(self) -> bool:
        """Return whether a send or the recording has failed (the shard must stop)."""
        return self.sends.error is not None or self.book.error is not None

    def may_continue(self) -> bool:
        """Return whether more work may be handed over (not stopped, nothing failed)."""
        return not (self.stats.stopped or self.failing())

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
        self.sends.submit([partial(self.sender.send, request) for request in self.sender.requests(items)])
        return True

    def progress(self) -> None:
        self.on_progress()
