"""Plan files: the typed, validated model of one campaign.

A plan is one YAML file in ``dags/plans/``; it becomes one Airflow DAG whose ``dag_id`` is the plan
id. Everything is validated here, at the edge, so the rest of the engine can trust its input. Errors
are raised as :class:`PlanError` naming the file, the field path and what is allowed.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from c2b.hashing import check_shard_count

PLAN_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CHANNELS = ("push", "sms", "inapp", "outbound_call", "private_domain", "webhook", "outbox")


class PlanError(ValueError):
    """A plan file is invalid; the message names the file, the field and the fix."""

    def __init__(self, path: str | Path, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {field}: {reason}" if field else f"{self.path}: {reason}"
                 for field, reason in problems]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Offer(_Strict):
    """A conversion offer that travels with a touch's message."""

    type: Literal["price_up_coupon", "red_packet", "tutorial", "cs_call"]
    amount: float | None = Field(default=None, gt=0, description="coupon / red packet amount")
    currency: str = "CNY"
    link: str | None = None


class Touch(_Strict):
    """One delivery step: a channel, a message template, assets and an optional offer."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    channel: Literal["push", "sms", "inapp", "outbound_call", "private_domain", "webhook", "outbox"]
    connection: str | None = Field(default=None, description="Airflow Connection id of the channel")
    template: str = Field(min_length=1)
    assets: dict[str, str] = Field(default_factory=dict)
    offer: Offer | None = None


class Variant(_Strict):
    """An arm of the plan's A/B test; ``control: true`` is the holdout that gets no touch."""

    weight: int = Field(ge=0)
    touches: list[str] = Field(default_factory=list)
    control: bool = False

    @model_validator(mode="after")
    def _control_has_no_touches(self) -> Variant:
        if self.control and self.touches:
            raise ValueError("a control variant gets no touches; remove 'touches' or 'control'")
        return self


class Experiment(_Strict):
    salt: str = Field(min_length=1)
    variants: dict[str, Variant]


class Exclusion(_Strict):
    """Users to leave out of the audience: exactly one of a segment, a suppression list, or the
    users contacted (by any plan) within the last N days."""

    segment: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_./-]+\.sql$")
    params: dict[str, Any] = Field(default_factory=dict)
    suppression_list: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    contacted_within_days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _exactly_one(self) -> Exclusion:
        given = [k for k in ("segment", "suppression_list", "contacted_within_days") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("an exclusion is exactly one of {segment: x.sql, params: {...}}, "
                             f"{{suppression_list: name}} or {{contacted_within_days: N}}; got {given or 'none'}")
        if self.params and self.segment is None:
            raise ValueError("'params' only goes with 'segment'")
        return self

    @property
    def label(self) -> str:
        """Short name of the exclusion, used as its key in the extract counts."""
        if self.segment is not None:
            return f"segment:{self.segment}"
        if self.suppression_list is not None:
            return f"suppression_list:{self.suppression_list}"
        return f"contacted_within_days:{self.contacted_within_days}"


class Audience(_Strict):
    """Who the plan targets: a segment SQL file under include/sql/segments/ with bound params."""

    segment: str = Field(pattern=r"^[A-Za-z0-9_./-]+\.sql$")
    params: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(default=None, gt=0)
    exclude: list[Exclusion] = Field(default_factory=list)


class Window(_Strict):
    """When a plan may send: a date range and daily ``send_hours`` in the user's timezone."""

    start: date | None = None
    end: date | None = None
    send_hours: str | None = Field(default=None, description='"HH:MM-HH:MM", local to the user')
    timezone: str = "Asia/Shanghai"

    @field_validator("send_hours")
    @classmethod
    def _hours_format(cls, v: str | None) -> str | None:
        if v is not None:
            from c2b.quiet_hours import parse_send_hours

            parse_send_hours(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception:
            raise ValueError(f"unknown timezone {v!r}; use an IANA name such as Asia/Shanghai") from None
        return v


class Delivery(_Strict):
    shards: int | Literal["auto"] = 16
    max_shard_members: int = 100_000
    encoding: Literal["auto", "zset", "packed"] = "auto"
    page_size: int = Field(default=100, ge=1, le=10_000)
    concurrency: int = Field(default=16, ge=1, le=1024)
    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: float = Field(default=30.0, ge=0)
    key_ttl_hours: float = Field(default=48.0, gt=0, description="TTL of a run's shard keys")
    rate_limit: float | None = Field(default=None, gt=0, description="messages/s for this plan, all shards")
    frequency_cap: int | None = Field(default=None, ge=1, description="max touches per user per day, all plans")

    @field_validator("shards")
    @classmethod
    def _power_of_two(cls, v: int | str) -> int | str:
        return v if v == "auto" else check_shard_count(int(v))


class Plan(_Strict):
    """One campaign; see README "Plan files" for every field."""

    id: str
    description: str = ""
    owner: str = "c2b"
    tags: list[str] = Field(default_factory=list)
    schedule: str | None = "@daily"
    start_date: date = date(2026, 1, 1)
    audience: Audience
    touches: list[Touch] = Field(min_length=1)
    experiment: Experiment | None = None
    delivery: Delivery = Delivery()
    window: Window | None = None

    @field_validator("id")
    @classmethod
    def _id_format(cls, v: str) -> str:
        if not PLAN_ID.match(v):
            raise ValueError("must be lower_snake_case, start with a letter, at most 64 characters")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> Plan:
        names = [t.name for t in self.touches]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"touch names must be unique, repeated: {', '.join(dupes)}")
        if self.experiment:
            for vname, variant in self.experiment.variants.items():
                unknown = [t for t in variant.touches if t not in names]
                if unknown:
                    raise ValueError(
                        f"experiment.variants.{vname}.touches names unknown touch(es) "
                        f"{', '.join(unknown)}; known: {', '.join(names)}")
            if sum(v.weight for v in self.experiment.variants.values()) <= 0:
                raise ValueError("experiment.variants weights must sum to more than 0")
        return self

    @property
    def variant_weights(self) -> dict[str, int]:
        """Weights per variant; a plan without an experiment has one variant, ``all``."""
        if self.experiment is None:
            return {"all": 1}
        return {n: v.weight for n, v in self.experiment.variants.items()}

    @property
    def salt(self) -> str:
        return self.experiment.salt if self.experiment else self.id

    def touches_of(self, variant: str) -> list[Touch]:
        """Return the touches a user in ``variant`` gets, in plan order."""
        if self.experiment is None:
            return list(self.touches)
        wanted = set(self.experiment.variants[variant].touches)
        return [t for t in self.touches if t.name in wanted]


def _field_path(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic location as ``touches[0].channel`` (list indexes in brackets)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_plan(data: Any, path: str | Path) -> Plan:
    """Validate already-loaded YAML data as a plan, raising :class:`PlanError`."""
    if not isinstance(data, dict):
        raise PlanError(path, [("", "a plan file must be a YAML mapping (id: ..., audience: ...)")])
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field; remove it or check its spelling (see README 'Plan files')"
            problems.append((_field_path(err["loc"], data), msg))
        raise PlanError(path, problems) from None


def load_plan(path: str | Path) -> Plan:
    """Read and validate one plan file."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise PlanError(path, [("", f"not valid YAML: {exc}")]) from None
    return parse_plan(data, path)
