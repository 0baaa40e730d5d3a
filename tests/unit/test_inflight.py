"""The send window: at most N jobs at once, the producer at most one backlog ahead, errors surface."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from c2b.delivery.inflight import InFlight


class Probe:
    """Jobs that record how many run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.done: list[int] = []
        self.lock = threading.Lock()

    def job(self, i: int, seconds: float = 0.01, fail: bool = False):
        async def run() -> None:
            self.running += 1  # the loop thread only: no lock needed
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(seconds)
            self.running -= 1
            if fail:
                raise RuntimeError(f"job {i} failed")
            self.done.append(i)

        return run


def test_never_more_than_concurrency_at_once_and_every_job_runs_in_order_of_start() -> None:
    probe = Probe()
    window = InFlight(concurrency=8, backlog=8)
    for page in range(10):
        assert window.wait_for_room(timeout=5)
        window.submit([probe.job(page * 20 + i) for i in range(20)])
    window.close()
    assert probe.peak == 8
    assert sorted(probe.done) == list(range(200))
    assert window.error is None and window.started == 200


def test_the_producer_waits_while_the_backlog_is_full() -> None:
    window = InFlight(concurrency=2, backlog=4)
    window.submit([Probe().job(i, seconds=0.2) for i in range(10)])  # 2 start, 8 wait > backlog
    t0 = time.monotonic()
    assert not window.wait_for_room(timeout=0.05)
    assert window.wait_for_room(timeout=5)  # after two rounds of 0.2 s, 4 or fewer wait
    assert 0.3 < time.monotonic() - t0 < 2
    window.close()


def test_a_failing_job_stops_the_window_and_is_reported() -> None:
    probe = Probe()
    window = InFlight(concurrency=1, backlog=100)
    window.submit([probe.job(0), probe.job(1, fail=True), *[probe.job(i) for i in range(2, 50)]])
    window.close()
    assert isinstance(window.error, RuntimeError) and "job 1 failed" in str(window.error)
    assert probe.done == [0]  # nothing after the failure started
    assert window.wait_for_room(timeout=0)


def test_drop_waiting_forgets_jobs_that_did_not_start_and_close_runs_the_finaliser() -> None:
    probe = Probe()
    window = InFlight(concurrency=3, backlog=100)
    window.submit([probe.job(i, seconds=0.1) for i in range(30)])
    time.sleep(0.02)
    window.drop_waiting()
    closed = []

    async def finaliser() -> None:
        closed.append(asyncio.get_running_loop())

    window.close(finaliser)
    assert sorted(probe.done) == [0, 1, 2] and len(closed) == 1


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        InFlight(concurrency=0, backlog=1)
