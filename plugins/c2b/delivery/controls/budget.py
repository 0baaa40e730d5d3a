"""Offer budgets: reserve a coupon (and the offer's amount) in Redis before each message with an offer.

Keys of one budget (all share one hash tag, so the reservation script touches one cluster slot)::

    c2b:budget:{<plan>:<touch>:<run>}:n               HASH  coupons, cents   (per: run)
    c2b:budget:{<plan>:<touch>}:n                     HASH  coupons, cents   (per: plan)
    c2b:budget:{<tag>}:r:<run>:<bucket>               SET   uids holding a reservation in <run>

Why it is exact:

- *One atomic check-and-take.* Every shard of every worker asks the same script, which grants a
  reservation only while the coupons and money left cover it, so 64 shards racing cannot take
  one coupon more than the budget (Redis runs one script at a time).
- *A reservation is keyed by (run, touch, uid).* The script grants an already reserved uid again
  without taking anything, so a call replayed after a lost reply, a retried task, or a shard that
  crashed between reserving and writing its ledger never reserves twice: the replay finds the
  uid in its set. That is also what makes a Redis outage harmless: the call is retried until it
  answers (``with_redis_retry``), and whichever of the tries ran, the uid holds one reservation.
- *Small keys.* Reservations are spread over ``2^k`` sets by the platform's uid hash so no set
  holds more than :data:`RESERVATIONS_PER_SET` members (the budget bounds how many there can be).

A failed send keeps its reservation: a send that gave up after a timeout may still have reached
the user, and a budget must never be overspent, so it counts what was *committed*, not what was
confirmed. A budget therefore ends with ``sent + failed`` = reserved messages.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from c2b.delivery.ledger import LEDGER_TTL, Change
from c2b.hashing import shard_index, uid_bytes
from c2b.plan.model import Plan, Touch
from c2b.store.redis_retry import with_redis_retry
from c2b.store.shards import _tag_part

log = logging.getLogger(__name__)

BUDGET_EXHAUSTED = "b"  # ledger state: final, not sent, not failed
OUTCOME = "budget_exhausted"
RESERVATIONS_PER_SET = 5_000
PLAN_BUDGET_TTL = 400 * 24 * 3600  # a per-plan budget outlives a year of runs; refreshed on every use

# KEYS: counter, then reservation sets. ARGV: coupon cap (-1: none), cents cap (-1: none), cost in
# cents, ttl, then (index into KEYS, uid) x n. Returns one 0/1 per uid, then 1 when another
# reservation would still fit.
_RESERVE = """
local coupons = tonumber(redis.call('HGET', KEYS[1], 'coupons') or '0')
local cents = tonumber(redis.call('HGET', KEYS[1], 'cents') or '0')
local cap, capc, cost, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function fits() return (cap < 0 or coupons + 1 <= cap) and (capc < 0 or cents + cost <= capc) end
local out = {}
local touched = {}
for i = 5, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  if redis.call('SISMEMBER', key, ARGV[i + 1]) == 1 then
    out[#out + 1] = 1
  elseif fits() then
    redis.call('SADD', key, ARGV[i + 1])
    touched[key] = true
    coupons = coupons + 1
    cents = cents + cost
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('HSET', KEYS[1], 'coupons', coupons, 'cents', cents)
redis.call('EXPIRE', KEYS[1], ttl)
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
out[#out + 1] = fits() and 1 or 0
return out
"""


class _Work(Protocol):
    """What :meth:`OfferBudgets.admit` needs of a delivery item."""

    field: str
    touch: str
    uid: str
    day: str
    channel: str

    @property
    def vt(self) -> str: ...


def cents(amount: float) -> int:
    """Return a money amount in hundredths (budgets are counted in whole cents, never floats)."""
    return round(amount * 100)


@dataclass
class TouchBudget:
    """The budget of one touch's offer in one run."""

    plan_id: str
    touch: str
    run_id: str
    coupons: int | None
    cents_cap: int | None
    cost: int
    per: str

    @property
    def tag(self) -> str:
        parts = [self.plan_id, self.touch] + ([self.run_id] if self.per == "run" else [])
        return "{" + ":".join(_tag_part(p) for p in parts) + "}"

    @property
    def counter(self) -> str:
        return f"c2b:budget:{self.tag}:n"

    @property
    def most_reservations(self) -> int:
        """The most reservations this budget can ever hold (what sizes its sets)."""
        limits = [x for x in (self.coupons, (self.cents_cap // self.cost) if self.cents_cap is not None and self.cost
                              else None) if x is not None]
        return min(limits) if limits else 1

    @property
    def sets(self) -> int:
        """Reservation sets per run: a power of two keeping each under RESERVATIONS_PER_SET."""
        need = max(1, math.ceil(self.most_reservations / RESERVATIONS_PER_SET))
        return min(1 << (need - 1).bit_length(), 1024)

    def set_key(self, bucket: int) -> str:
        return f"c2b:budget:{self.tag}:r:{_tag_part(self.run_id)}:{bucket}"

    @property
    def ttl(self) -> int:
        return LEDGER_TTL if self.per == "run" else PLAN_BUDGET_TTL

    @classmethod
    def of(cls, plan_id: str, run_id: str, touch: Touch) -> TouchBudget | None:
        offer = touch.offer
        if offer is None or offer.budget is None:
            return None
        b = offer.budget
        return cls(plan_id, touch.name, run_id, b.coupons, cents(b.amount) if b.amount is not None else None,
                   cents(offer.amount or 0.0), b.per)

    def spent(self, redis: Any) -> dict[str, Any]:
        """Return what the budget has reserved so far and what it allows."""
        raw = redis.hmget(self.counter, ["coupons", "cents"])
        used = [int(x or 0) for x in raw]
        return {"coupons": used[0], "coupons_cap": self.coupons, "amount": used[1] / 100,
                "amount_cap": None if self.cents_cap is None else self.cents_cap / 100, "per": self.per}


class OfferBudgets:
    """The budgets of a plan's touches in one run, reserved from by every shard."""

    def __init__(self, redis: Any, plan: Plan, run_id: str) -> None:
        self.redis = redis
        self.budgets = {t.name: b for t in plan.touches if (b := TouchBudget.of(plan.id, run_id, t))}
        if self.budgets:
            self._script = redis.register_script(_RESERVE)

    @property
    def active(self) -> bool:
        return bool(self.budgets)

    def reserve(self, touch: str, uids: Sequence[str]) -> tuple[list[bool], bool]:
        """Reserve one coupon per uid of ``touch``; return (granted per uid, whether any is left).

        Safe to call again with the same uids (a replay, a retry): reserved uids stay granted once.
        """
        b = self.budgets[touch]
        buckets = [shard_index(uid_bytes(u), b.sets) for u in uids]
        keys = [b.counter] + sorted({b.set_key(x) for x in buckets})
        index = {k: i + 1 for i, k in enumerate(keys)}
        args: list[Any] = [-1 if b.coupons is None else b.coupons, -1 if b.cents_cap is None else b.cents_cap,
                           b.cost, b.ttl]
        for u, x in zip(uids, buckets, strict=True):
            args += [index[b.set_key(x)], uid_bytes(u)]
        answer = with_redis_retry(lambda: self._script(keys=keys, args=args))
        return [bool(x) for x in answer[:-1]], bool(answer[-1])

    def admit(self, items: list[_Work], changes: list[Change],
              give_back: Callable[[list[tuple[str, str, str]]], None] | None = None) -> list[_Work]:
        """Return the ``items`` whose offer got a reservation (or carries no budget).

        The refused are appended to ``changes`` as ``budget_exhausted`` (a final ledger state), and
        their frequency-cap slots are handed to ``give_back`` (they reach nobody).
        """
        if not self.budgets or not items:
            return items
        by_touch: dict[str, list[_Work]] = defaultdict(list)
        keep: list[_Work] = []
        for it in items:
            (by_touch[it.touch] if it.touch in self.budgets else keep).append(it)
        refused: list[_Work] = []
        for touch, its in by_touch.items():
            granted, left = self.reserve(touch, [it.uid for it in its])
            for it, ok in zip(its, granted, strict=True):
                (keep if ok else refused).append(it)
            if not left:
                log.info("offer budget of touch %s is spent: its remaining users are recorded %s", touch, OUTCOME)
        if refused:
            changes.extend(Change(it.field, BUDGET_EXHAUSTED, it.vt, OUTCOME) for it in refused)
            if give_back is not None:
                give_back([(it.day, it.uid, it.channel) for it in refused])
        wanted = {id(it) for it in keep}
        return [it for it in items if id(it) in wanted]  # plan order kept


class BudgetCheck:
    """The page check (:class:`c2b.delivery.triage.PageCheck`): fresh items whose touch's budget
    is spent are held as ``budget_exhausted``, and their frequency-cap slots are given back."""

    def __init__(self, budgets: OfferBudgets, fcap: Any, capped: bool) -> None:
        self.budgets = budgets
        self.fcap = fcap
        self.capped = capped

    def _give_back(self, slots: list[tuple[str, str, str]]) -> None:
        receipt = self.fcap.new_receipt()  # the same on a replay: given back once
        with_redis_retry(lambda: self.fcap.give_back(slots, receipt))

    def __call__(self, page: Any) -> None:
        if self.budgets.active:
            page.fresh = self.budgets.admit(page.fresh, page.changes, self._give_back if self.capped else None)


def budget_report(redis: Any, plan: Plan, run_id: str, per_touch: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Return, per budgeted touch, what was reserved, the caps, and whether users were turned away."""
    out: dict[str, Any] = {}
    for t in plan.touches:
        b = TouchBudget.of(plan.id, run_id, t)
        if b is None:
            continue
        row: dict[str, Any] = b.spent(redis) if redis is not None else {"per": b.per}
        refused = per_touch.get(t.name, {}).get(OUTCOME, 0)
        row.update({"budget_exhausted": refused, "exhausted": refused > 0})
        out[t.name] = row
    return out


def run_budget_keys(plan: Plan, run_id: str) -> list[str]:
    """The reservation sets of one run's budgets (which users hold a coupon: a member per user).

    The run's cleanup archives them with its ledger, and a cleared run gets them back with it. The
    counters stay in Redis (one small hash per budget, a ``per: run`` one for the ledger's 7 days):
    ``report``, which may run at the same time as ``cleanup``, reads what was spent there.
    """
    keys: list[str] = []
    for touch in plan.touches:
        b = TouchBudget.of(plan.id, run_id, touch)
        if b is not None:
            keys += [b.set_key(i) for i in range(1, b.sets + 1)]  # buckets are 1-based (shard_index)
    return keys
