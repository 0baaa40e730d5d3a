"""Plan fields that protect users and money: an offer's budget and a plan's re-entry rule.

They live apart from :mod:`c2b.plan.model` (which only names them as field types) because the
delivery controls that enforce them (:mod:`c2b.delivery.controls.budget`,
:mod:`c2b.audience.reentry`) read nothing else of the plan.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_REENTRY_DAYS = 7  # a user gets the same plan again at most once a week unless the plan says otherwise


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfferBudget(_Strict):
    """The most an offer may give away: a count of coupons and/or a money amount.

    Every message carrying the offer reserves one coupon and the offer's ``amount`` before it is
    sent (atomically in Redis, shared by every shard); when the budget is spent the remaining
    users are recorded ``budget_exhausted``. ``per: run`` (default) starts afresh every run;
    ``per: plan`` is one budget for every run of the plan.
    """

    coupons: Annotated[int, Strict()] | None = Field(None, description="most messages carrying the offer")
    amount: Annotated[float, Strict()] | None = Field(None, description="most money, in the offer's currency")
    per: Literal["run", "plan"] = Field("run", description="run: a fresh budget each run; plan: one for all runs")

    @field_validator("coupons", "amount", mode="before")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= 0:
            raise ValueError(f"{v} is not a budget: must be > 0 (to send no offer, remove the offer or the touch)")
        return v

    @model_validator(mode="after")
    def _something(self) -> OfferBudget:
        if self.coupons is None and self.amount is None:
            raise PydanticCustomError("c2b_problems", "set coupons, amount or both",
                                      {"problems": [("", "set coupons: N, amount: X or both (or remove budget)")]})
        return self


class ReentryAfter(_Strict):
    """When a user may get the plan again: ``after_days`` after the last time (0: every run), or
    never (``once``). YAML: ``reentry: once`` or ``reentry: {after_days: N}``."""

    once: Annotated[bool, Strict()] = Field(False, description="true: a user gets the plan once, ever")
    after_days: Annotated[int, Strict()] = Field(DEFAULT_REENTRY_DAYS, description="days before a user may re-enter")

    @field_validator("after_days", mode="before")
    @classmethod
    def _not_negative(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"{v} days is not a re-entry delay: use 0 (every run), a number of days, "
                             "or 'reentry: once' (never again)")
        return v


def _reentry_shape(v: Any) -> Any:
    if v == "once":
        return {"once": True}
    if isinstance(v, str):
        raise ValueError(f"{v!r} is not a re-entry rule: use 'once' or {{after_days: N}}")
    if isinstance(v, int | float) and not isinstance(v, bool):
        raise ValueError("write {after_days: N} (or 'once'), not a bare number")
    if isinstance(v, dict) and v.get("once") and "after_days" in v:
        raise ValueError("'once' and 'after_days' exclude each other: write 'reentry: once' or {after_days: N}")
    return v


Reentry = Annotated[ReentryAfter, BeforeValidator(_reentry_shape)]


def reentry_days(rule: ReentryAfter) -> int | None:
    """Return the re-entry delay in days, or None for ``once`` (never again)."""
    return None if rule.once else rule.after_days
