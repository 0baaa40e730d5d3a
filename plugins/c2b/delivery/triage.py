"""Decide each item of a page before anything is sent: send it, skip it, or hold it back (and why).

The policy reads the page's ledger states first (a main-pass page by position: its record string,
:meth:`c2b.delivery.ledger.ShardLedger.page_states`; the deferred pass by field): final entries
are skipped, parked ones belong to the deferred pass, pending ones (a previous attempt's) are
*re-sends* that keep their key, the rest are *fresh*. Then the page goes through a list of
:class:`PageCheck` controls in order; each looks at the whole page at once (one Redis call per
page, not per user) and holds back what it must,
with the ledger state and outcome that say why. What is left gets the ledger's ``p`` (pending), and
every decision reaches the ledger in one call before anything is sent.

Adding a per-page control (suppression lists at send time, offer budgets...) is one more small
check in :func:`default_checks`: narrow ``page.fresh`` (and ``page.resend``, if a re-send must obey
it too) and call :meth:`PageDecisions.hold` for each item held back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from c2b.delivery.controls.frequency_cap import FrequencyCap
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.ledger import CAPPED, DEFERRED, EXPIRED, PENDING, Change, ShardLedger
from c2b.delivery.work import Item, PageWork, WorkBuilder
from c2b.store.redis_retry import with_redis_retry


@dataclass
class PageDecisions:
    """One page in triage: what may still go, and the ledger changes decided so far."""

    work: PageWork
    now: float
    resend: list[Item]  # pending from an earlier attempt: sent again with the same key
    fresh: list[Item]  # never tried
    changes: list[Change] = field(default_factory=list)

    def hold(self, item: Item, state: str, outcome: str, due: float | None = None) -> None:
        """Record that ``item`` is not sent now: its new ledger ``state`` and the report ``outcome``."""
        self.changes.append(Change(item.field, state, item.vt, outcome, due) if due is not None
                            else Change(item.field, state, item.vt, outcome))


class PageCheck(Protocol):
    """A control applied to a whole page before sending: narrows ``resend``/``fresh``, holds the rest."""

    def __call__(self, page: PageDecisions) -> None: ...


class QuietHours:
    """Users outside their send hours wait (``deferred``, with when); after the window, ``expired``.

    Applies to re-sends too: a pending entry whose user's hours have closed waits like a new one.
    """

    def __init__(self, window: SendWindow) -> None:
        self.window = window

    def __call__(self, page: PageDecisions) -> None:
        if self.window.always_open:
            return
        now_dt = datetime.fromtimestamp(page.now, UTC)
        opens: dict[str, datetime | None] = {}

        def may_go(it: Item) -> bool:
            if it.uid not in opens:
                opens[it.uid] = self.window.next_open(now_dt, page.work.attrs[it.uid].get("timezone"))
            due = opens[it.uid]
            if due is None:
                page.hold(it, EXPIRED, "expired")
                return False
            if due.timestamp() > page.now + 1:
                page.hold(it, DEFERRED, "deferred", due.timestamp())
                return False
            return True

        page.resend = [it for it in page.resend if may_go(it)]
        page.fresh = [it for it in page.fresh if may_go(it)]


class FrequencyCapCheck:
    """Take the users' slots for fresh items in one call; items without a slot are ``capped``.

    The ledger state says which cap refused the item (``c:per_week``, ``c:sms.per_day``...), and
    this attempt's counters count them (``capped <cap>``). Re-sends took their slot on the attempt
    that first tried them.
    """

    def __init__(self, fcap: FrequencyCap, counters: Counter[str] | None = None) -> None:
        self.fcap = fcap
        self.counters = counters if counters is not None else Counter()

    def __call__(self, page: PageDecisions) -> None:
        if not self.fcap.rules.capped or not page.fresh:
            return
        touches = [(it.day, it.uid, it.channel) for it in page.fresh]  # plan order: earlier touches first
        receipt = self.fcap.new_receipt()  # the same on a replay: taken once
        refused = with_redis_retry(lambda: self.fcap.take_each(touches, receipt))
        allowed = []
        for it, why in zip(page.fresh, refused, strict=True):
            if why is None:
                allowed.append(it)
            else:
                page.hold(it, f"{CAPPED}:{why}", "capped")
                self.counters[f"capped {why}"] += 1
        page.fresh = allowed


class Render:
    """Render each message; one whose template fails for this user is ``failed`` with the reason."""

    def __init__(self, builder: WorkBuilder) -> None:
        self.builder = builder

    def __call__(self, page: PageDecisions) -> None:
        def rendered(items: list[Item]) -> list[Item]:
            keep = []
            for it, message in zip(items, self.builder.messages(items, page.work.attrs), strict=True):
                if isinstance(message, Exception):  # a missing attribute for one user must not stop the shard
                    page.hold(it, f"f:template: {message}"[:160], "failed")
                else:
                    it.message = message
                    keep.append(it)
            return keep

        page.resend = rendered(page.resend)
        page.fresh = rendered(page.fresh)


def default_checks(window: SendWindow, fcap: FrequencyCap, builder: WorkBuilder, suppression: PageCheck,
                   budget: PageCheck, counters: Counter[str] | None = None) -> list[PageCheck]:
    """The controls every page goes through, in order: consent before the frequency cap (a suppressed
    user takes no slot), offer budgets after it (a capped user reserves no coupon), rendering last
    (only what may go is rendered)."""
    return [QuietHours(window), suppression, FrequencyCapCheck(fcap, counters), budget, Render(builder)]


class Triage(Protocol):
    """What a shard sends of a page: the items to send now, each with its rendered message."""

    def __call__(self, work: PageWork, deferred_pass: bool = False) -> list[Item]: ...


class LedgerTriage:
    """The policy of a real delivery: ledger states, then the checks, then one ledger call."""

    def __init__(self, ledger: ShardLedger, checks: Sequence[PageCheck], clock: Callable[[], float],
                 attempt: Counter[str]) -> None:
        self.ledger = ledger
        self.checks = list(checks)
        self.clock = clock
        self.attempt = attempt  # this attempt's counters (ShardStats.attempt)

    def __call__(self, work: PageWork, deferred_pass: bool = False) -> list[Item]:
        """Return the items to send now (ledger ``p``); every other decision is in the ledger."""
        items = work.items
        fields = [it.field for it in items]
        start = items[0].page if items else -1  # a main-pass page: its records are read by position
        if start >= 0:
            states = with_redis_retry(lambda: self.ledger.page_states(start, fields))
        else:
            states = with_redis_retry(lambda: self.ledger.states(fields))
        page = PageDecisions(work, self.clock(), [], [])
        stale: list[str] = []
        for it, state in zip(items, states, strict=True):
            if state == DEFERRED and not deferred_pass:
                self.attempt["still_deferred"] += 1  # the deferred pass owns parked entries
            elif state is not None and state not in (PENDING, DEFERRED):
                self.attempt["skipped_final"] += 1
                if deferred_pass:
                    stale.append(it.field)
            else:
                (page.resend if state == PENDING else page.fresh).append(it)
        if stale:
            with_redis_retry(lambda: self.ledger.forget_deferred(stale))
        for check in self.checks:
            check(page)
        for it in page.fresh:
            page.changes.append(Change(it.field, PENDING, it.vt, "pending"))
        changes = page.changes
        receipt = self.ledger.new_receipt()  # one per decision: a replay gets the first answer back
        applied = with_redis_retry(lambda: self.ledger.prepare(changes, receipt, start)) if changes else []
        mine = {c.field for c, ok in zip(changes, applied, strict=True) if ok and c.state == PENDING}
        self.attempt["resent"] += len(page.resend)
        self.attempt["deferred_now"] += sum(1 for c, ok in zip(changes, applied, strict=True)
                                            if ok and c.state == DEFERRED)
        # A fresh entry that changed under us (another attempt got there first) is not ours to send.
        return page.resend + [it for it in page.fresh if it.field in mine]


class DryRunTriage:
    """A dry run's policy: no ledger and no controls; render every message, count what cannot be."""

    def __init__(self, builder: WorkBuilder, counts: Counter[str]) -> None:
        self.builder = builder
        self.counts = counts

    def __call__(self, work: PageWork, deferred_pass: bool = False) -> list[Item]:
        out = []
        for it, message in zip(work.items, self.builder.messages(work.items, work.attrs), strict=True):
            if isinstance(message, Exception):
                self.counts[f"{it.vt}|dry_run_template_error"] += 1
            else:
                it.message = message
                out.append(it)
        return out
