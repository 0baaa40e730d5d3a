"""Consent at send time: users on a suppression list when their page is sent are not messaged.

Suppression lists used to apply only at extract, so a user who opted out after the extract (or
while parked until their morning by quiet hours) was still sent. Every page is now checked right
before its messages are handed to the channel, against Redis (one pipelined round trip per page,
see :mod:`c2b.store.suppression`):

- the plan's own ``audience.exclude`` suppression lists, and
- the global opt-out list (``C2B_OPT_OUT_LIST``, default ``opt_outs``): ``c2b suppress add
  opt_outs UID`` stops every plan's sends to that user from the next page on.

A suppressed message is final in the ledger (state ``u``) and counted as the outcome
``suppressed``. A message already handed to a channel by an earlier attempt (ledger ``p``) is
re-sent with its idempotency key as before: it may have been delivered already.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from c2b.delivery.ledger import Change
from c2b.plan.model import Plan
from c2b.store.redis_retry import with_redis_retry
from c2b.store.suppression import suppressed

SUPPRESSED = "u"  # ledger state: final, never sent
OUTCOME = "suppressed"


def opt_out_list() -> str:
    """Return the name of the global opt-out list every plan checks at send time."""
    return os.environ.get("C2B_OPT_OUT_LIST", "opt_outs")


def plan_lists(plan: Plan) -> list[str]:
    """Return the lists a plan's sends are checked against: its own, then the global opt-outs."""
    names = [e.suppression_list for e in plan.audience.exclude if e.suppression_list]
    return list(dict.fromkeys([*names, opt_out_list()]))


class SendTimeSuppression:
    """Drop the items of suppressed users from a page, recording each as ``suppressed``."""

    def __init__(self, redis: Any, plan: Plan) -> None:
        self.redis = redis
        self.lists = plan_lists(plan)

    def __call__(self, page: Any) -> None:
        """The page check (:class:`c2b.delivery.triage.PageCheck`): fresh items of suppressed users
        are held as ``suppressed``; re-sends (``resend``) keep their key and go, see above."""
        page.fresh = self.drop(page.fresh, page.changes)

    def drop(self, items: Sequence[Any], changes: list[Change]) -> list[Any]:
        """Return ``items`` without those of suppressed users; append their ledger changes."""
        if not items:
            return list(items)
        uids = [it.uid for it in items]
        hit = with_redis_retry(lambda: suppressed(self.redis, self.lists, uids))
        if not hit:
            return list(items)
        keep = []
        for it in items:
            if it.uid in hit:
                changes.append(Change(it.field, SUPPRESSED, it.vt, OUTCOME))
            else:
                keep.append(it)
        return keep
