"""Plan files: the typed, validated model of one campaign.

A plan is one YAML file ``dags/plans/<id>.yaml``; it becomes one Airflow DAG whose ``dag_id`` is the
plan id. Everything is validated here, at the edge, so the rest of the engine can trust its input:

1. the YAML itself (syntax, a mapping at the top);
2. each field (types, ranges, allowed values) by the pydantic models below;
3. cross-field rules (variants name existing touches, weights sum > 0, window end after start, ...);
4. the plan against the repository (:mod:`c2b.plan.checks`): the segment file exists, the plan's
   params match its placeholders and declared params, templates compile in the sandbox and read
   only the segment's columns.

Reading the file is :mod:`c2b.plan.load`; every problem is raised as one
:class:`~c2b.plan.errors.PlanError` whose lines read
``<file>: <field.path>: <what is allowed / how to fix> (line N)``. Nothing here does warehouse,
Redis or network I/O: it runs at DAG parse time.
"""

from __future__ import annotations

import re
from datetime import date, time
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Strict,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from c2b.channels import CHANNEL_NAMES
from c2b.channels import REGISTRY as CHANNEL_REGISTRY
from c2b.hashing import MAX_SHARDS
from c2b.plan.errors import did_you_mean, problems_error
from c2b.plan.goal import Goal
from c2b.plan.policies import OfferBudget, Reentry, ReentryAfter

# Channel names, default connections and whether one is needed come from the channel registry.
if TYPE_CHECKING:
    ChannelName = str
else:
    ChannelName = Literal[CHANNEL_NAMES]
URL_ASSETS = ("link", "image", "video")
OFFER_TYPES = ("price_up_coupon", "red_packet", "tutorial", "cs_call")
ASSET_KEYS = ("link", "image", "video", "title", "position")
ALL_USERS_SEGMENT = "all_users.sql"
SCHEDULE_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly",
                    "@yearly", "@annually")
PLAN_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")
_LIST_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SEGMENT_FILE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\.sql$")
_SEND_HOURS = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
_CURRENCY = re.compile(r"^[A-Z]{3}$")

# --- reusable field types ------------------------------------------------------------------------

def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be lower_snake_case: a letter, then letters, digits or _ (at most 64)")
    return v


def _check_url(v: str) -> str:
    if not _URL.match(v):
        raise ValueError("must be an http:// or https:// URL")
    return v


def _check_segment_file(v: str) -> str:
    if not _SEGMENT_FILE.match(v) or ".." in v.split("/"):
        raise ValueError("must be a .sql file name under include/sql/segments/, e.g. cancelled_for_reason.sql")
    return v


Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Number = Annotated[float, Strict()]
Name = Annotated[str, AfterValidator(_check_name)]
Url = Annotated[str, AfterValidator(_check_url)]
SegmentFile = Annotated[str, AfterValidator(_check_segment_file)]
Params = Annotated[dict[str, Any], Field(description="a value for each :placeholder of the segment, of the type "
                                                     "its header declares (bound by the driver)")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- schedule and window -------------------------------------------------------------------------

class AssetSchedule(_Strict):
    """Run when an Airflow Asset (a segment table) is refreshed."""

    asset: str = Field(min_length=1, max_length=1500, description="Asset URI, e.g. warehouse://c2b/order_cancellations")

    @field_validator("asset")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.isascii() or any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must be an ASCII Asset URI without spaces, e.g. warehouse://c2b/order_cancellations")
        if v.split("://", 1)[0].lower() == "airflow" and "://" in v:
            raise ValueError("the 'airflow' URI scheme is reserved by Airflow; use another scheme")
        return v


def _check_schedule(v: Any) -> Any:
    if v is None or isinstance(v, AssetSchedule):
        return v
    if isinstance(v, dict):
        if set(v) != {"asset"}:
            raise ValueError('an asset schedule is exactly {asset: "<uri>"}')
        return v
    if not isinstance(v, str):
        raise ValueError('must be a cron expression, a preset like @daily, {asset: "<uri>"} or null')
    if v.startswith("@"):
        if v not in SCHEDULE_PRESETS:
            raise ValueError(f"unknown preset {v!r}; presets: {', '.join(SCHEDULE_PRESETS)}")
        return v
    if not _valid_cron(v):
        raise ValueError(f"{v!r} is not a 5-field cron expression (minute hour day month weekday), "
                         "e.g. '0 9 * * 1'; or use a preset like @daily")
    return v


@lru_cache(maxsize=512)
def _valid_cron(expr: str) -> bool:
    if len(expr.split()) != 5:
        return False
    try:
        from croniter import croniter

        return bool(croniter.is_valid(expr))
    except Exception:  # noqa: BLE001 - any failure means "not a cron expression"
        return False


@lru_cache(maxsize=256)
def valid_timezone(name: str) -> bool:
    """Return whether ``name`` is an IANA timezone (e.g. Asia/Shanghai)."""
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(name)
        return True
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError for odd strings
        return False


def parse_send_hours(text: str) -> tuple[time, time]:
    """Return ``(start, end)`` of an ``HH:MM-HH:MM`` window, or raise ``ValueError`` saying the fix.

    ``end < start`` is an overnight window (``20:00-08:00``). Whatever passes here also passes the
    delivery's own reading of the window (:func:`c2b.delivery.controls.quiet_hours.parse_send_hours`).
    """
    m = _SEND_HOURS.match(text)
    if not m:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM, e.g. 09:00-21:00")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 23 or m2 > 59:
        raise ValueError(f"{text!r}: hours are 00-23 and minutes 00-59 (a window ending at midnight ends at 23:59)")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"{text!r} is an empty window; start and end must differ (or remove send_hours)")
    return time(h1, m1), time(h2, m2)


def _schedule_kind(v: Any) -> str:
    return "~asset" if isinstance(v, dict | AssetSchedule) else "~cron"


Schedule = Annotated[
    Annotated[str, Tag("~cron")] | Annotated[AssetSchedule, Tag("~asset")],
    Discriminator(_schedule_kind),
]


class Window(_Strict):
    """When the plan may run and send."""

    start: date | None = Field(None, description="first day the plan runs: the DAG's start_date (midnight in "
                                                 "timezone)")
    end: date | None = Field(None, description="last day the plan runs, not before start (or start_date): the "
                                               "DAG's end_date (end of that day)")
    send_hours: str | None = Field(
        None, description="HH:MM-HH:MM (00:00-23:59) local send window, null = any time; 20:00-08:00 spans "
                          "midnight. Read in the user's own timezone when the segment returns a timezone column, "
                          "else in window.timezone")
    timezone: str = Field("Asia/Shanghai", description="IANA timezone name of the plan's dates and schedule")

    @field_validator("send_hours")
    @classmethod
    def _send_hours(cls, v: str | None) -> str | None:
        if v is not None:
            parse_send_hours(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        if not valid_timezone(v):
            raise ValueError(f"{v!r} is not an IANA timezone; e.g. Asia/Shanghai, Europe/London, UTC")
        return v

    @property
    def send_range(self) -> tuple[time, time] | None:
        """The parsed ``send_hours`` (start, end), or None when sending is allowed all day."""
        return parse_send_hours(self.send_hours) if self.send_hours else None


# --- audience -------------------------------------------------------------------------------------

_EXCLUDE_KINDS = ("segment", "suppression_list", "contacted_within_days")
EXCLUDE_HELP = ("each exclude item is exactly one of {segment: x.sql, params: {...}}, "
                "{suppression_list: name}, {contacted_within_days: N}")


class Exclusion(_Strict):
    """Users to leave out of the audience: exactly one of the users another segment returns, a
    named suppression list (opt-outs, complaints; ``c2b suppress``), or the users any
    plan touched in the last N days."""

    segment: SegmentFile | None = Field(None, description="leave out the users this segment file returns")
    params: Params = Field(default_factory=dict)
    suppression_list: str | None = Field(None, description="leave out a named list kept in Redis (c2b suppress)")
    contacted_within_days: Int | None = Field(None, ge=1, le=3650,
                                              description="leave out users any plan touched in the last N days")

    @field_validator("suppression_list")
    @classmethod
    def _list_name(cls, v: str | None) -> str | None:
        if v is not None and not _LIST_NAME.match(v):
            raise ValueError("must be a list name: 1-64 letters, digits, _ . - (see `c2b suppress`)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if isinstance(data, dict):
            given = [k for k in _EXCLUDE_KINDS if data.get(k) is not None]
            if len(given) != 1:
                raise problems_error([("", f"{EXCLUDE_HELP}; this one has {', '.join(given) or 'none of them'}")])
            if data.get("params") and "segment" not in given:
                raise problems_error([("params", "only goes with 'segment'; remove it")])
        return data

    @property
    def label(self) -> str:
        """Short name of the exclusion, used as its key in the extract counts."""
        if self.segment is not None:
            return f"segment:{self.segment}"
        if self.suppression_list is not None:
            return f"suppression_list:{self.suppression_list}"
        return f"contacted_within_days:{self.contacted_within_days}"


class Audience(_Strict):
    """Who the plan targets: everyone (``all: true``) or a segment SQL file with bound params."""

    all: Bool = Field(False, description=f"true targets every user: the segment library's {ALL_USERS_SEGMENT} "
                                          "(then leave segment out)")
    # Never None once validated (all: true fills in all_users.sql); optional for the JSON Schema.
    segment: SegmentFile = Field(None, description="SQL file under include/sql/segments/; required unless "
                                                     "all is true")  # type: ignore[assignment]
    params: Params = Field(default_factory=dict)
    exclude: list[Exclusion] = Field(default_factory=list, description=EXCLUDE_HELP)
    limit: Int | None = Field(None, gt=0, description="keep at most this many users (a capped trial)")

    @model_validator(mode="before")
    @classmethod
    def _all_or_segment(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        everyone, segment = data.get("all"), data.get("segment")
        if everyone is True:
            if segment not in (None, ALL_USERS_SEGMENT):
                raise problems_error([("segment", "remove it, or remove 'all: true': a plan targets everyone "
                                                  "or one segment")])
            return {**data, "segment": ALL_USERS_SEGMENT}
        if segment is None:
            raise problems_error([("segment", "missing: set 'segment: <file>.sql' (under include/sql/segments/) "
                                              "or 'all: true'")])
        return data


# --- experiment -----------------------------------------------------------------------------------

class Variant(_Strict):
    """An arm of the plan's A/B test; ``control: true`` is the holdout that gets no touch."""

    weight: Int = Field(ge=0, description="share of users, relative to the other variants' weights (a whole "
                                          "number; 0 pauses the variant; the weights must sum to more than 0)")
    touches: list[Name] = Field(default_factory=list, description="names of the touches (of this plan) this "
                                                                   "variant gets")
    control: Bool = Field(False, description="a holdout: gets no touch, the baseline for conversion (then no "
                                             "touches)")

    @model_validator(mode="after")
    def _control_has_no_touches(self) -> Variant:
        if self.control and self.touches:
            raise problems_error([("touches", "a control variant gets no touches; remove 'touches' or 'control'")])
        return self


class Experiment(_Strict):
    """A/B test: users are split by murmur3(salt + uid) over the variants' weights."""

    salt: str = Field(min_length=1, description="a user's variant is murmur3(salt:uid) over the weights, the same "
                                                "on every run: change the salt to reshuffle")
    variants: dict[Name, Variant] = Field(min_length=1, description="at least one, by lower_snake_case name")


# --- touches --------------------------------------------------------------------------------------

class Offer(_Strict):
    """A conversion offer that travels with a touch's message."""

    type: Literal["price_up_coupon", "red_packet", "tutorial", "cs_call"] = Field(
        description="price_up_coupon and red_packet need an amount > 0, tutorial a link; cs_call a 1-to-1 call")
    amount: Number | None = Field(None, gt=0, description="required for price_up_coupon and red_packet")
    currency: str = Field("CNY", description="a 3-letter ISO 4217 code in capitals")
    link: Url | None = Field(None, description="required for tutorial: the tutorial's URL")
    budget: OfferBudget | None = Field(None, description="most coupons and/or money the offer may give away")

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not _CURRENCY.match(v):
            raise ValueError("must be a 3-letter ISO 4217 code in capitals, e.g. CNY")
        return v

    @model_validator(mode="after")
    def _required_by_type(self) -> Offer:
        if self.type in ("price_up_coupon", "red_packet") and self.amount is None:
            raise problems_error([("amount", f"required for a {self.type} offer: a number > 0")])
        if self.type == "tutorial" and self.link is None:
            raise problems_error([("link", "required for a tutorial offer: the tutorial's http(s) URL")])
        if self.budget and self.budget.amount is not None and self.amount is None:
            raise problems_error([("budget.amount", f"a {self.type} offer has no amount to count; "
                                                    "budget it by coupons instead")])
        return self


class Touch(_Strict):
    """One delivery step: a channel, a message template, assets and an optional offer."""

    name: Name = Field(description="lower_snake_case (at most 64 characters), unique in the plan")
    channel: ChannelName = Field(
        description="where the touch goes (docs/channels.md); outbox appends JSON lines to a file per run, for trials")
    connection: str | None = Field(
        None, description="Airflow Connection id of the channel's gateway; default c2b_<channel> (c2b_call for "
                          "outbound_call); none for outbox, optional for inapp")
    template: str = Field(min_length=1, description="Jinja text rendered in a sandbox per user. It may read the "
                                                    "segment's columns and the built-ins uid, variant, offer "
                                                    "(offer.type, .amount, .currency, .link), assets (assets.link "
                                                    "...), plan, touch; Jinja's filters, tests and globals work")
    assets: dict[Literal["link", "image", "video", "title", "position"], str] = Field(
        default_factory=dict, description="link, image, video (http(s) URLs sent with the message); title (a "
                                          "push's or card's title, 1-200 characters); position (in-app "
                                          "position, e.g. popup or banner)")
    offer: Offer | None = Field(None, description="a conversion offer sent inside the message")

    @field_validator("connection")
    @classmethod
    def _conn_id(cls, v: str | None) -> str | None:
        if v is not None and not _CONN_ID.match(v):
            raise ValueError("must be an Airflow Connection id: letters, digits, _ . - (no secrets here)")
        return v

    @field_validator("assets")
    @classmethod
    def _asset_values(cls, v: dict[str, str]) -> dict[str, str]:
        problems = []
        for key, value in v.items():
            if key in URL_ASSETS and not _URL.match(value):
                problems.append((key, "must be an http:// or https:// URL"))
            elif key == "title" and not 0 < len(value) <= 200:
                problems.append((key, "must be 1-200 characters"))
            elif key == "position" and not _NAME.match(value):
                problems.append((key, "must be an in-app position name such as popup or banner"))
        if problems:
            raise problems_error(problems)
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_connection(cls, data: Any) -> Any:
        # A gateway channel without a connection uses its default one, as the delivery does.
        # A channel that is not a string (a mapping, a list) is not a key here: the field's own
        # validation names it as the plan error (it once raised TypeError: unhashable type).
        if isinstance(data, dict) and data.get("connection") is None and isinstance(data.get("channel"), str):
            cls_ = CHANNEL_REGISTRY.get(data["channel"])
            if cls_ is not None and cls_.default_connection:
                return {**data, "connection": cls_.default_connection}
        return data

    @model_validator(mode="after")
    def _connection_needed(self) -> Touch:
        if self.connection is None and CHANNEL_REGISTRY[self.channel].needs_connection:
            raise problems_error([("connection", f"required for channel {self.channel}: the id of the Airflow "
                                                 "Connection of its gateway")])
        return self


# --- delivery -------------------------------------------------------------------------------------

def _check_shards(v: Any) -> Any:
    if v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > MAX_SHARDS or v & (v - 1):
        raise ValueError(f"must be a power of two from 1 to {MAX_SHARDS} (Airflow's max_map_length), or 'auto'")
    return v


class Delivery(_Strict):
    """How a run sends: sharding, paging, concurrency, limits and retries."""

    shards: Annotated[int | Literal["auto"], BeforeValidator(_check_shards)] = Field(
        16, description=f"Redis keys per run (one mapped deliver task per non-empty shard): a power of two from 1 "
                        f"to {MAX_SHARDS}, or auto: the smallest power of two whose largest shard fits "
                        "max_shard_members")
    shards_per_task: Int = Field(1, ge=1, le=MAX_SHARDS, description="shards one mapped deliver task sends, one "
                                 "after another: 1 shows every shard as its own task; more means fewer task starts "
                                 "(each costs a worker ~1-2 s of CPU) for plans of millions of users")
    max_shard_members: Int = Field(100_000, ge=1, description="the most users one shard key may hold; a load that "
                                                              "would exceed it fails before writing anything")
    encoding: Literal["auto", "zset", "packed"] = Field(
        "auto", description="how a shard key stores its users: packed (integer uids as 8-byte integers, ~8.5 bytes "
                            "per user), zset (any uid, ~105 bytes per user), auto (packed when every uid is a "
                            "canonical integer, 42 not 042, else zset)")
    page_size: Int = Field(100, ge=1, le=10_000, description="users read per page of a shard")
    concurrency: Int = Field(16, ge=1, le=1024, description="sends in flight per deliver task")
    rate_limit: Number | None = Field(None, gt=0, description="messages per second for this plan; null = none")
    retries: Int = Field(2, ge=0, le=20, description="Airflow retries of each task of the run")
    retry_delay_seconds: Number = Field(30.0, ge=0, description="wait before a task's retry")
    retry_backoff: Number = Field(0.0, ge=0, description="the retry delay's multiplier per attempt (Airflow's "
                                                                 "retry_exponential_backoff); 0 keeps it constant")
    frequency_cap: Int | None = Field(None, ge=1, description="most touches one user gets per day (the user's "
                                                             "local day) from all plans of its business line (of "
                                                             "all plans outside any line, for a plan in none); in a "
                                                             "line: at most, and by default, the line's "
                                                             "frequency_cap.per_day")
    key_ttl_hours: Number = Field(48.0, gt=0, description="TTL of a run's shard keys (set when a key "
                                                                      "is created)")


# --- the plan -------------------------------------------------------------------------------------

class Plan(_Strict):
    """One campaign: one YAML file in dags/plans/, one Airflow DAG."""

    id: str = Field(description="the DAG id: lower_snake_case, starts with a letter, at most 64 characters; equals "
                                "the file name <id>.yaml")
    description: str = Field("", description="the first line is the DAG's description, all of it its doc in the "
                                              "Airflow UI")
    owner: str = Field("c2b", min_length=1, description="the DAG's owner")
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, description="the DAG's tags; c2b is always added")
    schedule: Annotated[Schedule | None, BeforeValidator(_check_schedule)] = Field(
        "@daily", description=f'a 5-field cron expression ("0 9 * * 1-5"); a preset: {", ".join(SCHEDULE_PRESETS)}; '
                              '{asset: "<uri>"} to run each time that Airflow Asset (a segment table) is updated by '
                              "its producer; null for manual runs only. Cron and presets are read in window.timezone")
    start_date: date = Field(date(2026, 1, 1), description="the DAG's start when window.start is not set")
    # (no pydantic mypy plugin: a default_factory of a model type reads as a type error)
    window: Window = Field(default_factory=Window, description="when the plan may run and send")  # type: ignore[arg-type]
    audience: Audience = Field(description="who is targeted")
    experiment: Experiment | None = Field(None, description="A/B variants; without it every user gets every touch "
                                                            "(one variant, all)")
    touches: list[Touch] = Field(min_length=1, description="the plan's delivery steps")
    delivery: Delivery = Field(default_factory=Delivery, description="how a run sends")  # type: ignore[arg-type]
    reentry: Reentry = Field(default_factory=ReentryAfter,  # type: ignore[arg-type]
                             description="'once', or {after_days: N} (default 7): when a user may get this plan again")
    goal: Goal | None = Field(None, description="conversion metrics and attribution window (c2b.plan.goal)")
    # The frequency caps of the plan's business line, set by c2b.plan.lines.with_line (not a YAML field).
    _cap_rules: Any = PrivateAttr(None)

    @property
    def has_control(self) -> bool:
        """Whether the plan has a control (holdout) variant: the baseline of its uplift."""
        return self.experiment is not None and any(v.control for v in self.experiment.variants.values())

    @field_validator("id")
    @classmethod
    def _id_format(cls, v: str) -> str:
        if not PLAN_ID.match(v):
            raise ValueError("must be lower_snake_case, start with a letter, at most 64 characters")
        return v

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Plan:
        problems = cross_field_problems(self)
        deferred = (info.context or {}).get("deferred_problems")
        if problems and deferred is not None:
            deferred.extend(problems)  # parse_plan reports them with the repository checks
        elif problems:
            raise problems_error(problems)
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

    @property
    def first_day(self) -> date:
        """The DAG's start date: ``window.start`` when set, else ``start_date``."""
        return self.window.start or self.start_date

    def touches_of(self, variant: str) -> list[Touch]:
        """Return the touches a user in ``variant`` gets, in plan order."""
        if self.experiment is None:
            return list(self.touches)
        wanted = set(self.experiment.variants[variant].touches)
        return [t for t in self.touches if t.name in wanted]


def cross_field_problems(plan: Plan) -> list[tuple[str, str]]:
    """Return the rules that span fields, as ``(field_path, message)``."""
    problems: list[tuple[str, str]] = []
    names = [t.name for t in plan.touches]
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            problems.append((f"touches[{i}].name", f"{n!r} is used by another touch; touch names must be unique"))
        seen.add(n)
    if plan.experiment:
        for vname, variant in plan.experiment.variants.items():
            for j, t in enumerate(variant.touches):
                if t not in seen:
                    hint = did_you_mean(t, names)
                    problems.append((f"experiment.variants.{vname}.touches[{j}]",
                                     f"no touch named {t!r}{hint}; touches: {', '.join(names)}"))
        if sum(v.weight for v in plan.experiment.variants.values()) <= 0:
            problems.append(("experiment.variants", "weights must sum to more than 0; give a variant weight > 0"))
    w = plan.window
    if w.start and w.end and w.end < w.start:
        problems.append(("window.end", f"{w.end} is before window.start {w.start}; the window must not be empty"))
    elif w.end and not w.start and w.end < plan.start_date:
        problems.append(("window.end", f"{w.end} is before start_date {plan.start_date}"))
    return problems



def plan_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a plan file (for editors: YAML language servers read it)."""
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "c2b campaign plan"
    return schema
