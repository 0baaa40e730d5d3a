"""Business lines: a folder of plans with the settings every plan of the line shares.

A line is ``dags/plans/<line>/`` holding ``line.yaml`` and the line's plan files. The settings
file says what Airflow's own multi-team mode does not (see docs/business-lines.md for why the
project does not rely on that mode yet)::

    owners: [growth-team@example.com]        # required: who answers for the line's plans
    default_tags: [growth]                   # added to every plan's DAG tags
    connections: [c2b_push, c2b_sms]         # the only connection ids its plans may name
    pool: growth                             # Airflow pool every task of its plans runs in
    frequency_cap: {per_day: 3, per_week: 10, per_channel: {sms: {per_day: 1}}}  # touches per user, all plans
    global_holdout: {share: 0.05, salt: growth-2026}   # users no plan of the line touches

A plan file directly in ``dags/plans/`` belongs to no line (the settings above do not apply).
Every problem is a :class:`~c2b.plan.model.PlanError` naming the file and field.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from c2b.audience.eligibility import GlobalHoldout
from c2b.channels import channel_class
from c2b.delivery.controls.frequency_cap import CapRules, ChannelCap
from c2b.plan.errors import PlanError, did_you_mean, problems_error, validation_problems
from c2b.plan.load import read_yaml, with_lines
from c2b.plan.model import Plan

LINE_FILE = "line.yaml"
PLANS_DIRNAME = "plans"
_LINE_NAME = re.compile(r"^[a-z][a-z0-9_]{2,49}$")  # also an Airflow team name (3-50 characters) usable in env vars


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelCaps(_Strict):
    """A channel's caps in a line: touches per user per local day and/or ISO week on that channel."""

    per_day: Annotated[int, Strict()] | None = Field(None, ge=1, description="touches per user per local day")
    per_week: Annotated[int, Strict()] | None = Field(None, ge=1, description="touches per user per local ISO week")

    def window_problems(self) -> list[tuple[str, str]]:
        """Return what is wrong between the two windows (a week below its day)."""
        if self.per_day is not None and self.per_week is not None and self.per_week < self.per_day:
            return [("per_week", f"{self.per_week} is below per_day {self.per_day}, but a week holds every day of "
                                 f"it: set per_week to at least {self.per_day}, or lower per_day")]
        return []


class LineCap(ChannelCaps):
    """The most touches a user gets from all plans of the line: per local day, per ISO week, and
    per channel (``per_channel: {sms: {per_day: 1, per_week: 2}}``)."""

    per_channel: dict[str, ChannelCaps] = Field(default_factory=dict, description="caps of single channels")

    @model_validator(mode="after")
    def _windows(self) -> LineCap:
        from c2b.channels import CHANNEL_NAMES

        problems = self.window_problems()
        if self.per_day is None and self.per_week is None and not self.per_channel:
            problems.append(("", "set per_day, per_week and/or per_channel (or remove frequency_cap)"))
        for ch, caps in self.per_channel.items():
            at = f"per_channel.{ch}"
            if ch not in CHANNEL_NAMES:
                problems.append((at, f"unknown channel {ch!r}{did_you_mean(ch, list(CHANNEL_NAMES))}; channels: "
                                     f"{', '.join(CHANNEL_NAMES)}"))
                continue
            if caps.per_day is None and caps.per_week is None:
                problems.append((at, "set per_day and/or per_week (or remove the entry)"))
            problems += [(f"{at}.{f}", m) for f, m in caps.window_problems()]
            for window in ("per_day", "per_week"):
                mine, line = getattr(caps, window), getattr(self, window)
                if mine is not None and line is not None and mine > line:
                    problems.append((f"{at}.{window}", f"{mine} is above the line's {window} {line}, so it would "
                                                       f"never apply: lower it to at most {line}, or remove it"))
        if problems:
            raise problems_error(problems)
        return self


class LineHoldout(_Strict):
    """The line's universal control group: ``share`` of its users, picked by a salted hash."""

    share: Annotated[float, Strict()] | Annotated[int, Strict()] = Field(
        gt=0, le=0.5, description="share of users held out, e.g. 0.05 (at most 0.5)")
    salt: str = Field(min_length=1, description="change it only to draw a new holdout")


class LineSettings(_Strict):
    """``line.yaml``: what every plan of one business line shares."""

    owners: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    description: str = ""
    default_tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    connections: list[str] | None = Field(None, description="allowed connection ids; null: any")
    pool: str | None = Field(None, description="the Airflow pool of the line's tasks")
    frequency_cap: LineCap | None = None
    global_holdout: LineHoldout | None = None

    @field_validator("pool")
    @classmethod
    def _pool(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9_.\-]{1,256}$", v):
            raise ValueError("must be an Airflow pool name: letters, digits, _ . -")
        return v


class Line:
    """A business line: its name, folder and settings."""

    def __init__(self, name: str, folder: Path, settings: LineSettings) -> None:
        self.name = name
        self.folder = folder
        self.settings = settings

    @property
    def caps(self) -> CapRules:
        """The line's frequency caps, counted across its plans (none: its plans only count)."""
        c = self.settings.frequency_cap
        if c is None:
            return CapRules(scope=self.name)
        channels = tuple((ch, ChannelCap(x.per_day, x.per_week)) for ch, x in sorted(c.per_channel.items()))
        return CapRules(scope=self.name, per_day=c.per_day, per_week=c.per_week, per_channel=channels)

    @property
    def holdout(self) -> GlobalHoldout | None:
        h = self.settings.global_holdout
        return GlobalHoldout(float(h.share), h.salt) if h else None


def line_folder(plan_file: Path) -> Path | None:
    """Return the line folder of a plan file (``plans/<line>/<id>.yaml``), or None outside a line."""
    parent = plan_file.parent
    if parent.name == PLANS_DIRNAME:
        return None
    if parent.parent.name == PLANS_DIRNAME:
        return parent
    return None


def line_of(plan_file: str | Path) -> Line | None:
    """Return the business line of a plan file, or None when it is in no line.

    Raises :class:`PlanError` when the line's settings are missing or invalid.
    """
    folder = line_folder(Path(plan_file))
    if folder is None:
        return None
    settings = folder / LINE_FILE
    try:
        stamp = settings.stat().st_mtime_ns
    except OSError:
        raise PlanError(plan_file, [("", f"the plan is in business line folder {folder.name}/ but "
                                         f"{folder.name}/{LINE_FILE} does not exist; add it (owners: [...] at "
                                         "least) or move the plan to dags/plans/")]) from None
    return _load_line(str(folder), stamp)


@lru_cache(maxsize=64)
def _load_line(folder: str, _stamp: int) -> Line:
    path = Path(folder) / LINE_FILE
    name = Path(folder).name
    if not _LINE_NAME.match(name):
        raise PlanError(path, [("", f"line folder name {name!r} must be 3-50 lower-case letters, digits or _, "
                                    "starting with a letter (it is also the line's Airflow team name)")])
    data, text = read_yaml(path)
    if not isinstance(data, dict):
        raise PlanError(path, [("", "a line settings file must be a YAML mapping (owners: [...], ...)", 1)])
    try:
        settings = LineSettings.model_validate(data)
    except ValidationError as exc:
        problems = [(f, f"unknown key; allowed: {', '.join(_allowed_keys(f))}" if "unknown field" in m else m)
                    for f, m in validation_problems(exc)]
        raise PlanError(path, with_lines(problems, text)) from None
    return Line(name, Path(folder), settings)


def _allowed_keys(field: str) -> list[str]:
    """Return the keys allowed where the unknown key ``field`` (a path in line.yaml) was found."""
    parent = field.rsplit(".", 1)[0] if "." in field else ""
    if parent == "frequency_cap":
        return list(LineCap.model_fields)
    if parent.startswith("frequency_cap.per_channel."):
        return list(ChannelCaps.model_fields)
    if parent == "global_holdout":
        return list(LineHoldout.model_fields)
    return list(LineSettings.model_fields)


def line_problems(plan: Plan, line: Line | None) -> list[tuple[str, str]]:
    """Return what the plan does that its line does not allow: connections outside the line, or a
    daily cap looser than the line's (a plan may only be stricter)."""
    if line is None:
        return []
    problems = []
    line_cap = line.settings.frequency_cap
    own = plan.delivery.frequency_cap
    if own is not None and line_cap is not None and line_cap.per_day is not None and own > line_cap.per_day:
        problems.append(("delivery.frequency_cap",
                         f"{own} is above business line {line.name}'s frequency_cap.per_day {line_cap.per_day} "
                         f"({line.name}/{LINE_FILE}): a plan may be stricter than its line, never looser; set at "
                         f"most {line_cap.per_day}, or remove it to take the line's"))
    if line.settings.connections is None:
        return problems
    allowed = set(line.settings.connections)
    for i, t in enumerate(plan.touches):
        conn = t.connection
        if conn is not None and conn not in allowed:
            default = " (the channel's default)" if channel_class(t.channel).default_connection == conn else ""
            problems.append((f"touches[{i}].connection",
                             f"{conn!r}{default} is not a connection of business line {line.name}; its "
                             f"{LINE_FILE} allows: {', '.join(sorted(allowed)) or 'none'}"))
    return problems


def check_plan_line(plan: Plan, plan_file: str | Path, text: str | None = None) -> Line | None:
    """Return the plan's line after checking the plan against it; raise :class:`PlanError` if not allowed."""
    line = line_of(plan_file)
    problems = line_problems(plan, line)
    if problems:
        if text is None:
            _, text = read_yaml(plan_file)  # only to point at the lines
        raise PlanError(plan_file, with_lines(problems, text))
    return line


def dag_settings(line: Line | None) -> dict[str, Any]:
    """Return what the line adds to a plan's DAG: owners, tags, pool."""
    if line is None:
        return {}
    s = line.settings
    return {"owner": ",".join(s.owners), "tags": [*s.default_tags, f"line:{line.name}"], "pool": s.pool}


def cap_rules(line: Line | None, plan: Plan) -> CapRules:
    """Return the frequency caps ``plan`` obeys: its line's, with its own daily cap as a stricter one.

    The counts are the line's (every plan of the line counts there, and no other line's plans do);
    a plan outside any line counts in the scope of the plans outside any line.
    """
    own = plan.delivery.frequency_cap
    if line is None:
        return CapRules(per_day=own)
    caps = line.caps
    if own is not None and (caps.per_day is None or own < caps.per_day):
        caps = replace(caps, per_day=own)
    return caps


def with_line(plan: Plan, plan_file: str | Path, text: str | None = None) -> Plan:
    """Return ``plan`` checked against its line and with the line's settings filled in.

    The plan's frequency caps (:func:`cap_rules`) ride on it for the delivery
    (:func:`c2b.delivery.controls.frequency_cap.rules_of`), and its ``delivery.frequency_cap``
    shows its daily cap: its own, else its line's ``frequency_cap.per_day``. Raises
    :class:`PlanError` (naming the plan file and field, or the line file).
    """
    line = check_plan_line(plan, plan_file, text)
    if line is None:
        return plan
    rules = cap_rules(line, plan)
    if rules.per_day != plan.delivery.frequency_cap:
        plan = plan.model_copy(update={"delivery": plan.delivery.model_copy(update={"frequency_cap": rules.per_day})})
    else:
        plan = plan.model_copy()
    plan._cap_rules = rules
    return plan


def line_folders(plans_dir: Path) -> list[Path]:
    """Return the business-line folders of a plans folder (those holding a ``line.yaml``)."""
    return sorted(p.parent for p in plans_dir.glob(f"*/{LINE_FILE}"))


def multi_team_env(plans_dir: Path, execution_api_url: str, executor: str = "LocalExecutor") -> dict[str, str]:
    """Return the Airflow settings that run each business line as an Airflow team (multi-team mode).

    Each line folder becomes a DAG bundle owned by the team of the same name, with its own executor.
    A team's executor reads only team-scoped settings (``AIRFLOW__<TEAM>___<SECTION>__<KEY>``), so
    the execution API's URL is repeated per team. Teams and their pools are created separately
    (``airflow teams create``, ``airflow pools set ... --team-name``): see docs/business-lines.md.
    """
    import json

    names = [f.name for f in line_folders(plans_dir)]
    bundles = [{"name": n, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                "kwargs": {"path": str(plans_dir / n)}, "team_name": n} for n in names]
    env = {"AIRFLOW__CORE__MULTI_TEAM": "True",
           "AIRFLOW__CORE__EXECUTOR": ";".join([executor, *(f"{n}={executor}" for n in names)]),
           "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": execution_api_url}
    for n in names:
        env[f"AIRFLOW__{n.upper()}___CORE__EXECUTION_API_SERVER_URL"] = execution_api_url
    return env
