"""A plan's ``goal:``: what counts as a conversion after a touch, and for how long.

```yaml
goal:
  metrics:
    sold:   {sql: orders_after_touch.sql}                      # a rate: converted users / assigned
    amount: {sql: orders_after_touch.sql, kind: value}         # mean value per assigned user
  primary: sold            # the metric the page leads with (default: the first)
  window_days: 7           # conversions count within this many days after each user's touch (1-30)
  method: sequential       # the page's intervals: sequential (valid read daily over the window) or fixed
```

A goal file is a segment-style SQL file under ``include/sql/goals/`` whose header declares its
params and columns (``uid``, ``event_time``, optionally ``value``). Attribution binds two params
itself when the SQL uses them, ``:since`` and ``:until`` (timestamps bounding the events it needs),
so a goal can let the warehouse skip old rows; the plan gives the others. Nothing here touches the
warehouse: the checks read the file's header, as for segments (:mod:`c2b.plan.checks`).

Kept apart from :mod:`c2b.plan.model` (which only adds the ``goal`` field), with its own base
model, so the two modules do not import each other.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_WINDOW_DAYS = 30
DEFAULT_WINDOW_DAYS = 7
RESERVED_PARAMS = frozenset({"since", "until"})  # bound by attribution, not by the plan
REQUIRED_COLUMNS = ("uid", "event_time")
GOALS_DIR = "goals"
_GOAL_FILE = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\.sql$")
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _problems(problems: list[tuple[str, str]]) -> PydanticCustomError:
    # The same error type c2b.plan.model.problems_error raises, so each problem keeps its field path.
    text = "; ".join(f"{p}: {m}" if p else m for p, m in problems)
    return PydanticCustomError("c2b_problems", text, {"problems": problems})  # type: ignore[arg-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GoalMetric(_Strict):
    """One conversion metric: a goal SQL file and how to read it."""

    sql: str = Field(description="a .sql file under include/sql/goals/ returning uid, event_time[, value]")
    params: dict[str, Any] = Field(default_factory=dict, description="values for its :placeholders "
                                   "(not :since/:until, which attribution binds)")
    kind: Literal["rate", "value"] = Field("rate", description="rate: converted users / assigned; value: "
                                           "mean of the value column per assigned user (Welch's t-test)")

    @field_validator("sql")
    @classmethod
    def _file_name(cls, v: str) -> str:
        if not _GOAL_FILE.match(v) or ".." in v.split("/"):
            raise ValueError("must be a .sql file name under include/sql/goals/, e.g. orders_after_touch.sql")
        return v

    @field_validator("params")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_PARAMS & set(v))
        if taken:
            raise _problems([(k, "attribution binds this param itself (the events' time range); "
                                       "remove it") for k in taken])
        return v


class Goal(_Strict):
    """What a plan measures after its touches (see the module docstring)."""

    metrics: dict[str, GoalMetric] = Field(min_length=1, description="conversion metrics by name")
    primary: str | None = Field(None, description="the metric the results page shows (default: the first)")
    window_days: Annotated[int, Strict()] = Field(
        DEFAULT_WINDOW_DAYS, ge=1, le=MAX_WINDOW_DAYS,
        description=f"days after each user's touch that a conversion counts (1-{MAX_WINDOW_DAYS})")
    method: Literal["sequential", "fixed"] = Field(
        "sequential", description="sequential: group-sequential intervals, valid read every day of the window; "
                                  "fixed: classic 95% intervals, valid only read once at the window's end")

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, v: dict[str, GoalMetric]) -> dict[str, GoalMetric]:
        bad = [k for k in v if not isinstance(k, str) or not _METRIC_NAME.match(k)]
        if bad:
            raise _problems([(k, "a metric name must be lower_snake_case (a letter, then letters, digits, _)")
                             for k in bad])
        return v

    @model_validator(mode="after")
    def _primary_exists(self) -> Goal:
        if self.primary is not None and self.primary not in self.metrics:
            close = difflib.get_close_matches(self.primary, list(self.metrics), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _problems([("primary", f"no metric named {self.primary!r}{hint}; metrics: "
                                         f"{', '.join(self.metrics)}")])
        return self

    @property
    def primary_name(self) -> str:
        return self.primary or next(iter(self.metrics))

    @property
    def primary_metric(self) -> GoalMetric:
        return self.metrics[self.primary_name]


# --- checks against the goal library (parse time: headers only) ------------------------------------

def goal_path(name: str) -> Any:
    """Return the path of goal file ``name`` under ``include/sql/goals/``."""
    from c2b.settings import sql_dir

    return sql_dir() / GOALS_DIR / name


def available_goals() -> list[str]:
    from c2b.settings import sql_dir

    base = sql_dir() / GOALS_DIR
    return sorted(str(p.relative_to(base)) for p in base.rglob("*.sql")) if base.is_dir() else []


def read_goal_spec(name: str) -> Any:  # -> c2b.plan.checks.SegmentSpec
    """Return what goal file ``name`` declares (FileNotFoundError / ValueError as for segments)."""
    from c2b.plan.checks import _spec_cached
    from c2b.settings import sql_dir

    base = sql_dir() / GOALS_DIR
    path = goal_path(name)
    if not os.path.normpath(path).startswith(os.path.normpath(base) + os.sep):
        raise FileNotFoundError(name)
    with open(path, "rb") as f:
        data = f.read()
    return _spec_cached(data, name)


def goal_problems(goal: Goal, has_control: bool) -> list[tuple[str, str]]:
    """Return every problem of ``goal`` against its SQL files' headers (field path, fix)."""
    from c2b.plan.checks import segment_param_problems

    problems: list[tuple[str, str]] = []
    for name, metric in goal.metrics.items():
        where = f"goal.metrics.{name}"
        try:
            spec = read_goal_spec(metric.sql)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            names = available_goals()
            close = difflib.get_close_matches(metric.sql, names, n=1)
            problems.append((f"{where}.sql", f"no goal file include/sql/goals/{metric.sql}"
                                             f"{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                             f"goal files: {', '.join(names) or 'none'}"))
            continue
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append((f"{where}.sql", f"cannot read include/sql/goals/{metric.sql}: {exc}"))
            continue
        problems += segment_param_problems(spec, metric.sql, dict(metric.params), where, "sql",
                                           supplied=RESERVED_PARAMS)
        columns = spec.columns
        if columns is None:
            problems.append((f"{where}.sql", f"{metric.sql} has no '-- columns:' header; declare what it returns, "
                                             "e.g. '-- columns: uid, event_time, value'"))
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            problems.append((f"{where}.sql", f"{metric.sql} must return {' and '.join(missing)}: a goal file "
                                             f"returns uid, event_time (and optionally value); its '-- columns:' "
                                             f"header lists {', '.join(columns) or 'none'}"))
        if metric.kind == "value" and "value" not in columns:
            problems.append((f"{where}.kind", f"kind value needs a value column, which {metric.sql} does not "
                                              "return; add it to the SQL and its '-- columns:' header, or use "
                                              "kind: rate"))
    return problems


def goal_note(has_goal: bool, has_control: bool) -> str | None:
    """Return why a plan's results page will show no uplift, or None when it will."""
    if not has_goal:
        return "this plan has no goal: add a 'goal:' section to measure conversions"
    if not has_control:
        return ("this plan has no control group, so there is no uplift to measure: the page shows "
                "conversions per variant only (add a variant with control: true to measure uplift)")
    return None
