"""How a request of a page's items goes out: to its channel (with retries), or, in a dry run, nowhere.

A :class:`Sender` groups a page's items into requests and sends one request; the send loop
(:mod:`c2b.delivery.loop`) runs many of them at once. A dry run is just another sender: it counts
what would go instead of sending it, so nothing else in the shard needs to know it is a dry run.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from c2b.channels.base import Channel, Message, Outcome
from c2b.delivery.controls.rate_limit import Limits
from c2b.delivery.recorder import Recorder
from c2b.delivery.work import Item


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


class Sender(Protocol):
    """Send the items of a page, one request at a time."""

    def requests(self, items: list[Item]) -> list[list[Item]]:
        """Group a page's items into requests (all of one touch each)."""
        ...

    async def send(self, request: list[Item]) -> None:
        """Send one request and hand its outcomes on."""
        ...

    async def aclose(self) -> None:
        """Release what the sender holds in the send loop."""
        ...


class ChannelSender:
    """Send through each touch's channel, within its rate limits, and hand outcomes to the recorder."""

    def __init__(self, channels: Mapping[str, Channel], limits: Mapping[str, Limits], retry: RetryPolicy,
                 recorder: Recorder) -> None:
        self.channels = channels
        self.limits = limits
        self.retry = retry
        self.recorder = recorder

    def requests(self, items: list[Item]) -> list[list[Item]]:
        """Per touch, ``batch_size`` messages each (the touch's channel connection decides)."""
        return [chunk for touch, its in _by_touch(items).items()
                for chunk in _chunks(its, self.channels[touch].batch_size)]

    async def send(self, request: list[Item]) -> None:
        touch = request[0].touch
        outcomes = await self.retry.send(self.channels[touch], [it.message for it in request if it.message],
                                         self.limits[touch])
        # The slot stays taken until the outcomes are in the ledger: what a crash can leave sent
        # but unrecorded (and a retry sends again) is at most the in-flight window.
        await self.recorder.record(request, outcomes)

    async def aclose(self) -> None:
        """Close the channels' connections (they live in the send loop)."""
        for channel in self.channels.values():
            await channel.aclose()


class DryRunSender:
    """Send nothing: count each message as ``variant|touch|dry_run``."""

    def __init__(self, counts: Counter[str], channels: Mapping[str, Channel]) -> None:
        self.counts = counts
        self.channels = channels

    def requests(self, items: list[Item]) -> list[list[Item]]:
        return list(_by_touch(items).values())

    async def send(self, request: list[Item]) -> None:
        for it in request:
            self.counts[f"{it.vt}|dry_run"] += 1

    async def aclose(self) -> None:
        for channel in self.channels.values():
            await channel.aclose()


def _by_touch(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        out[it.touch].append(it)
    return out


def _chunks(items: list[Item], size: int) -> list[list[Item]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
