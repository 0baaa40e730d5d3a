"""Who may get this plan at all, after the plan's own exclusions: the line's global holdout, then re-entry.

- *Global holdout.* A business line may keep a fixed slice of its users out of every one of its
  plans (``global_holdout`` in ``line.yaml``), so it can measure the total effect of all its
  campaigns. Membership is ``murmur3_32(salt + ":" + uid) mod 10000 < share * 10000``: the same
  users every day and in every plan of the line, and recomputable from a uid alone by the results
  work (:meth:`GlobalHoldout.members`).
- *Re-entry.* A user who got the plan too recently (:mod:`c2b.delivery.reentry`) is left out.

Each user turned away is counted once, under ``global_holdout`` or ``not_reentered``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from c2b.delivery.reentry import ReentryRule
from c2b.hashing_arrow import murmur3_32
from c2b.plan.model import Plan

log = logging.getLogger(__name__)

SLOTS = 10_000  # holdout shares are set in hundredths of a percent


@dataclass(frozen=True)
class GlobalHoldout:
    """A line's universal control group: a salted hash slice of its users."""

    share: float
    salt: str

    def members(self, uids: pa.Array) -> np.ndarray:
        """Return a mask of the uids (an Arrow string array without nulls) in the holdout."""
        if len(uids) == 0:
            return np.zeros(0, dtype=bool)
        bucket = murmur3_32(uids, 0, self.salt.encode("utf-8", "replace") + b":").astype(np.uint64) % np.uint64(SLOTS)
        return bucket < np.uint64(round(self.share * SLOTS))


class Eligibility:
    """The global holdout and re-entry checks of one extract."""

    def __init__(self, plan: Plan, redis: Any, now: datetime, holdout: GlobalHoldout | None = None) -> None:
        self.holdout = holdout
        self.reentry: ReentryRule | None = None
        if redis is None:
            log.warning("plan %s: re-entry not checked (no Redis given: a preview, not a run)", plan.id)
        else:
            rule = ReentryRule(plan, redis, now)
            self.reentry = rule if rule.active else None

    def apply(self, texts: pa.Array, alive: np.ndarray, counts: Any) -> None:
        """Turn away the users of ``texts`` still ``alive`` who may not get the plan; count them."""
        for name, check in (("global_holdout", self.holdout and self.holdout.members),
                            ("not_reentered", self.reentry and self.reentry.matches)):
            if not check:
                continue
            idx = np.flatnonzero(alive)
            if not len(idx):
                return
            hit = check(texts.take(pa.array(idx)))
            if hit.any():
                setattr(counts, name, getattr(counts, name) + int(hit.sum()))
                alive[idx[hit]] = False
