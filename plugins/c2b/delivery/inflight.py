"""Keep up to N sends in flight on an asyncio loop, fed page by page by a blocking producer.

The shard's main thread reads pages, checks the ledger and renders messages: blocking Redis work
that suits a plain thread. The sends are the opposite: many slow waits and little work each, which
suits one event loop far better than a thread per send (see ``c2b.channels.async_http``). This
module joins the two: the producer hands over whole pages of send jobs; the loop thread starts a
job whenever a slot of the window frees (a sliding window, no page barrier); the producer blocks
only while more than ``backlog`` jobs wait for a slot, so it stays one page ahead and memory stays
bounded whatever the shard's size.

Blocking channels (files, Redis pipelines) run on the loop's default executor, a thread pool of
``threads`` threads, from ``Channel.asend_batch``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

Job = Callable[[], Coroutine[Any, Any, Any]]


class InFlight:
    """An event loop on its own thread running at most ``concurrency`` jobs at once."""

    def __init__(self, concurrency: int, backlog: int, threads: int | None = None, name: str = "c2b-send") -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self.backlog = backlog
        self.loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(max_workers=threads or concurrency, thread_name_prefix=f"{name}-pool")
        self.loop.set_default_executor(self._executor)
        self._queue: deque[Job] = deque()  # loop thread only
        self._running = 0  # loop thread only
        self._idle: asyncio.Event | None = None  # created in the loop
        self._cond = threading.Condition()
        self._waiting = 0  # jobs handed over and not started yet (guarded by _cond)
        self.error: BaseException | None = None
        self.started = 0  # jobs started (loop thread; read for progress)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- producer side (any thread but the loop's) -----------------------------------------------
    def wait_for_room(self, timeout: float) -> bool:
        """Block until at most ``backlog`` jobs wait for a slot (or a job failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting <= self.backlog or self.error is not None, timeout)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` to the loop; they start in order as slots free up."""
        if not jobs:
            return
        with self._cond:
            self._waiting += len(jobs)
        self.loop.call_soon_threadsafe(self._enqueue, list(jobs))

    def drop_waiting(self) -> None:
        """Forget the jobs that have not started (the shard is stopping); running ones finish."""
        self.loop.call_soon_threadsafe(self._drop)

    def close(self, finally_: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Wait for every handed-over job, run ``finally_`` in the loop, stop the loop and its threads."""
        try:
            asyncio.run_coroutine_threadsafe(self._drain(finally_), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
            self._executor.shutdown(wait=True)

    # -- loop side --------------------------------------------------------------------------------
    def _enqueue(self, jobs: Iterable[Job]) -> None:
        self._queue.extend(jobs)
        self._pump()

    def _pump(self) -> None:
        if self.error is not None:
            self._drop()
            return
        started = 0
        while self._queue and self._running < self.concurrency:
            job = self._queue.popleft()
            self._running += 1
            started += 1
            self.loop.create_task(job()).add_done_callback(self._done)
        if started:
            self.started += started
            with self._cond:
                self._waiting -= started
                if self._waiting <= self.backlog:
                    self._cond.notify_all()
        elif not self._running and self._idle is not None:
            self._idle.set()

    def _drop(self) -> None:
        dropped = len(self._queue)
        self._queue.clear()
        with self._cond:
            self._waiting -= dropped
            self._cond.notify_all()
        if not self._running and self._idle is not None:
            self._idle.set()

    def _done(self, task: asyncio.Task) -> None:
        self._running -= 1
        if not task.cancelled() and task.exception() is not None and self.error is None:
            self.error = task.exception()
            with self._cond:
                self._cond.notify_all()
        self._pump()

    async def _drain(self, finally_: Callable[[], Awaitable[Any]] | None) -> None:
        self._idle = asyncio.Event()
        try:
            while self._queue or self._running:
                self._idle.clear()
                self._pump()
                if self._queue or self._running:
                    await self._idle.wait()
        finally:
            if finally_ is not None:
                await finally_()
