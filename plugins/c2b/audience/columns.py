"""Which segment columns a run keeps: personal data only as long as a template needs it.

A segment may return more than a plan uses (the demo's ``phone`` column, for one). The staging
Parquet is written to shared storage and read by every worker, so it keeps only ``uid``,
``variant``, the attributes the plan's templates read, and ``timezone`` (quiet hours and the
frequency cap's day are local to the user). Everything else is dropped at extract.
"""

from __future__ import annotations

from typing import Any

from c2b.plan.model import Plan
from c2b.plan.templates import BUILTIN_NAMES, template_names

ALWAYS = ("uid", "variant", "timezone")


def template_attributes(plan: Plan) -> list[str]:
    """Return the user attributes the plan's templates read (sorted)."""
    names: set[str] = set()
    for t in plan.touches:
        names |= template_names(t.template)
    return sorted(names - BUILTIN_NAMES)


def staged_columns(plan: Plan) -> frozenset[str]:
    """Return the columns the staging file may keep for ``plan``."""
    return frozenset(ALWAYS) | frozenset(template_attributes(plan))


def keep_only(batch: Any, keep: frozenset[str]) -> Any:
    """Return the Arrow record batch with only the ``keep`` columns (in their order)."""
    names = [n for n in batch.schema.names if n in keep]
    return batch if len(names) == batch.num_columns else batch.select(names)
