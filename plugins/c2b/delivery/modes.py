"""A shard delivers for real (ledger, checkpoint, channels) or as a dry run: two strategies, chosen once.

:class:`ShardDelivery` (:mod:`c2b.delivery.shard`) drives the pages the same way in both; the mode
decides where it starts, how a page is triaged, how a request is sent, where outcomes and pages are
recorded, whether the deferred and orphan passes run, and what the final stats are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from c2b.channels.base import Channel
from c2b.delivery.controls.budget import BudgetCheck, OfferBudgets
from c2b.delivery.controls.frequency_cap import CapRules, FrequencyCap
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.controls.rate_limit import Limits
from c2b.delivery.controls.suppression import SendTimeSuppression
from c2b.delivery.ledger import ShardLedger
from c2b.delivery.recorder import PageBook, Recorder
from c2b.delivery.senders import ChannelSender, DryRunSender, RetryPolicy, Sender
from c2b.delivery.stats import ShardStats
from c2b.delivery.triage import DryRunTriage, LedgerTriage, Triage, default_checks
from c2b.delivery.work import WorkBuilder
from c2b.store.redis_retry import with_redis_retry


class DeliveryMode(Protocol):
    """How a shard's pages are triaged, sent and recorded."""

    resumable: bool  # a checkpoint, a deferred queue and orphans exist (the passes after the main one)
    triage: Triage

    def start_cursor(self) -> int: ...

    def open(self) -> tuple[Sender, PageBook]:
        """Return the sender and page book of one run of the send loop."""
        ...

    def recorded(self, stats: ShardStats) -> tuple[int, int]:
        """Return how many messages this attempt sent and failed so far (for progress logs)."""
        ...

    def finish(self, stats: ShardStats) -> None:
        """Fill the shard's final stats."""
        ...


class LiveMode:
    """Send through the channels; every decision and outcome goes to the shard's ledger."""

    resumable = True

    def __init__(self, redis: Any, ledger: ShardLedger, channels: Mapping[str, Channel],
                 limits: Mapping[str, Limits], retry: RetryPolicy, builder: WorkBuilder, window: SendWindow,
                 caps: CapRules, clock: Callable[[], float], stats: ShardStats) -> None:
        self.redis = redis
        self.ledger = ledger
        self.channels = channels
        self.limits = limits
        self.retry = retry
        self.caps = caps
        self.done: Counter[str] = Counter()  # sent / failed recorded by this attempt
        fcap = FrequencyCap(redis, caps)
        budget = BudgetCheck(OfferBudgets(redis, builder.plan, builder.run_id), fcap, caps.capped)
        checks = default_checks(window, fcap, builder, SendTimeSuppression(redis, builder.plan), budget, stats.attempt)
        self.triage: Triage = LedgerTriage(ledger, checks, clock, stats.attempt)

    def start_cursor(self) -> int:
        return with_redis_retry(self.ledger.checkpoint)

    def open(self) -> tuple[Sender, PageBook]:
        recorder = Recorder(self.ledger, FrequencyCap(self.redis, self.caps), self.caps.capped,
                            lambda uids: None,  # histories: at the attempt's end (c2b.delivery.histories)
                            done=self.done)
        return ChannelSender(self.channels, self.limits, self.retry, recorder), recorder

    def recorded(self, stats: ShardStats) -> tuple[int, int]:
        return self.done["sent"], self.done["failed"]

    def finish(self, stats: ShardStats) -> None:
        counts, failures, extra = with_redis_retry(self.ledger.totals)
        stats.counts = Counter(counts)
        stats.failures = Counter(failures)
        stats.users = extra.get("users", 0)
        stats.pages = extra.get("pages", 0)
        stats.deferred_total = extra.get("deferred_total", 0)
        stats.deferred, stats.next_due = with_redis_retry(self.ledger.waiting)
        stats.attempt["deferred"] = stats.deferred
        # Rate-limit slots this attempt reached too late and booked again (its worker was short of
        # CPU): each one is a slot of the shared limit nobody used, so a limit not reached shows here.
        rebooked = sum(limit.rebooked for limit in self.limits.values())
        if rebooked:
            stats.attempt["rate_slots_rebooked"] = rebooked


class _CountingBook:
    """A dry run's page book: control users go straight into the counts; nothing to checkpoint."""

    error: BaseException | None = None

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    def open_page(self, start: int, end: int, outstanding: int, users: int, counters: dict[str, int]) -> None:
        self.counts.update(counters)

    def close(self) -> None:
        pass


class DryRunMode:
    """Render every message from rank 0 and count it; send nothing, write no ledger, apply no controls."""

    resumable = False

    def __init__(self, channels: Mapping[str, Channel], builder: WorkBuilder, stats: ShardStats) -> None:
        self.channels = channels
        self.counts = stats.counts
        self.triage: Triage = DryRunTriage(builder, stats.counts)

    def start_cursor(self) -> int:
        return 0

    def open(self) -> tuple[Sender, PageBook]:
        return DryRunSender(self.counts, self.channels), _CountingBook(self.counts)

    def recorded(self, stats: ShardStats) -> tuple[int, int]:
        return stats.counts.total(), 0

    def finish(self, stats: ShardStats) -> None:
        stats.users, stats.pages = stats.attempt["users"], stats.attempt["pages"]
