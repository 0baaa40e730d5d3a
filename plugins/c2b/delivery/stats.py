"""What one shard reports to the run's ``report`` task (through XCom: counts only, never users)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class ShardStats:
    """What one shard reports: cumulative outcome counts over every attempt, plus this attempt's.

    ``counts`` is keyed ``variant|touch|outcome`` with outcomes ``sent``, ``failed``, ``capped``
    (frequency cap), ``expired`` (window closed), ``deferred`` (still waiting for quiet hours to
    end), and ``variant|-|holdout`` for control users.
    """

    shard: int
    users: int = 0
    pages: int = 0
    stopped: bool = False
    stop_reason: str = ""
    counts: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # reason -> n
    deferred: int = 0            # messages still waiting for their send hours
    deferred_total: int = 0      # messages that ever waited (sent later, or still waiting)
    next_due: float | None = None  # epoch seconds of the earliest waiting message
    attempt: Counter = field(default_factory=Counter)  # this attempt: sent, failed, resent, pages...
    seconds: float = 0.0

    def to_xcom(self) -> dict[str, Any]:
        due = datetime.fromtimestamp(self.next_due, UTC).isoformat() if self.next_due else None
        return {"shard": self.shard, "users": self.users, "pages": self.pages, "stopped": self.stopped,
                "stop_reason": self.stop_reason, "counts": dict(self.counts), "failures": dict(self.failures),
                "deferred": self.deferred, "deferred_total": self.deferred_total, "next_due": due,
                "attempt": dict(self.attempt), "seconds": round(self.seconds, 3)}
