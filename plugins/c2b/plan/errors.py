"""Plan errors: one :class:`PlanError` per plan file, one line per problem naming file, field and fix.

A problem reads ``<file>: <field.path>: <what is allowed / how to fix> (line N)``. The models of
:mod:`c2b.plan.model` raise pydantic errors; this module turns them into that wording (field paths
like ``touches[0].offer.amount``, "did you mean" hints, the fields allowed where an unknown one was
found). :mod:`c2b.plan.load` attaches the YAML line of each field.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

# Union tags of the models start with "~" so they cannot be mistaken for field names (field_path
# leaves them out of a location).
UNION_TAGS = frozenset({"~cron", "~asset"})
PROBLEMS_TYPE = "c2b_problems"  # pydantic error type carrying a list of (sub-path, message)

Problem = tuple[str, str] | tuple[str, str, int | None]


class PlanError(ValueError):
    """A plan file is invalid; every line names the file, the field and the fix.

    ``problems`` holds ``(field_path, message, line)`` tuples; ``line`` (1-based, in the YAML file)
    is None when it is not known. ``line`` on the exception is the first known one.
    """

    def __init__(self, path: str | Path, problems: Sequence[Problem]) -> None:
        self.path = display_path(path)
        # One line per problem, whatever text a message quotes from the file.
        self.problems: list[tuple[str, str, int | None]] = [
            (_one_line(p[0]), _one_line(p[1]), p[2] if len(p) > 2 else None) for p in problems]  # type: ignore[misc]
        self.line = next((ln for _, _, ln in self.problems if ln), None)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """Return one ``<file>: <field>: <fix> (line N)`` line per problem."""
        out = []
        for fld, msg, line in self.problems:
            where = f" (line {line})" if line else ""
            out.append(f"{self.path}: {fld}: {msg}{where}" if fld else f"{self.path}: {msg}{where}")
        return out


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def display_path(path: str | Path) -> str:
    """Return ``path`` relative to the working directory when it is below it (shorter messages)."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return str(p)


def problems_error(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """Return a pydantic error carrying several ``(sub-path, message)`` problems of one model.

    Model-level checks raise this so :func:`parse_plan` can report each problem at its own field
    path instead of one message at the model's path.
    """
    text = "; ".join(f"{p}: {m}" if p else m for p, m in problems)
    return PydanticCustomError(PROBLEMS_TYPE, text, {"problems": problems})  # type: ignore[arg-type]


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- error rendering ------------------------------------------------------------------------------

def join_key(base: str, key: object) -> str:
    """Return the field path of mapping key ``key`` under ``base`` (odd keys quoted)."""
    part = field_path((str(key),))
    return part if not base else f"{base}{part}" if part.startswith("[") else f"{base}.{part}"


def field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location as ``touches[0].offer.amount`` (list indexes in brackets)."""
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out, previous = out + f"[{part}]", part
            continue
        part, after = str(part), previous
        previous = part
        if part in UNION_TAGS and after == "schedule":
            continue  # the union member pydantic names in the location
        if part.startswith("function-") and "[" in part:
            continue  # a validator pydantic names in the location
        if not part or not part.isprintable() or part != part.strip() or any(c in part for c in ".[]:'\""):
            out += f"[{part!r}]"  # an odd key (empty, control characters, separators): quote it
            continue
        out += f".{part}" if out else part
    return out


_MODEL_AT = {  # parent path (indexes as [], variant names as *) -> the model allowed there
    "": "Plan", "window": "Window", "audience": "Audience", "experiment": "Experiment",
    "experiment.variants.*": "Variant", "touches[]": "Touch", "touches[].offer": "Offer",
    "delivery": "Delivery", "schedule.~asset": "AssetSchedule",
    "audience.exclude[]": "Exclusion", "goal": "Goal", "touches[].offer.budget": "OfferBudget",
    "reentry": "ReentryAfter",
}


def _allowed_fields(loc: tuple[int | str, ...]) -> list[str]:
    """Return the field names allowed where an unknown field at ``loc`` was found."""
    parts = [("[]" if isinstance(p, int) else f".{p}") for p in loc[:-1]]
    if len(loc) >= 4 and loc[:2] == ("experiment", "variants"):
        parts[2] = ".*"
    shape = "".join(parts).lstrip(".").replace(".[]", "[]")
    from c2b.plan import model as plan_model

    name = _MODEL_AT.get(shape)
    model = getattr(plan_model, name or "", None)
    return list(model.model_fields) if model else []


def _message(err: Any) -> str:
    """Turn one pydantic error into 'what is allowed / how to fix' text."""
    kind, ctx, loc = err["type"], err.get("ctx") or {}, err["loc"]
    value = err.get("input")
    if kind == "missing":
        return "missing; this field is required"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc)
        hint = did_you_mean(str(loc[-1]), allowed)
        return (f"unknown field{hint}; allowed here: {', '.join(allowed)}" if allowed
                else "unknown field; remove it or check its spelling (see docs/plan-reference.md)")
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), expected) if isinstance(value, str) else ""
        if loc and loc[-1] == "[key]":
            return f"unknown key {value!r}{hint}; allowed: {', '.join(expected)}"
        return f"{value!r} is not allowed{hint}; use one of: {', '.join(expected)}"
    simple = {
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number", "float_type": "must be a number",
        "float_parsing": "must be a number", "bool_type": "must be true or false",
        "bool_parsing": "must be true or false", "string_type": "must be text (quote it in YAML)",
        "list_type": "must be a list: YAML '- item' lines or [a, b]",
        "dict_type": "must be a mapping: 'key: value' lines", "model_type": "must be a mapping: 'key: value' lines",
        "model_attributes_type": "must be a mapping: 'key: value' lines",
        "date_type": "must be a date like 2026-01-31", "date_parsing": "must be a date like 2026-01-31",
        "date_from_datetime_parsing": "must be a date like 2026-01-31",
        "date_from_datetime_inexact": "must be a date like 2026-01-31 (no time of day)",
        "string_too_short": "must not be empty", "none_required": "must be null",
    }
    if kind in simple:
        return simple[kind]
    if kind == "greater_than":
        return f"must be > {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}"
    if kind == "less_than":
        return f"must be < {ctx['lt']}"
    if kind == "less_than_equal":
        return f"must be <= {ctx['le']}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return str(err["msg"])


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Return ``(field_path, message)`` for every error of a pydantic ``ValidationError``."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if err["type"] == PROBLEMS_TYPE:
            base = field_path(loc)
            for sub, msg in (err.get("ctx") or {}).get("problems", []):
                path = f"{base}.{sub}" if base and sub and not sub.startswith("[") else f"{base}{sub}" or sub
                problems.append((path, msg))
            continue
        if loc and loc[-1] == "[key]":
            loc_key: tuple[int | str, ...] = (*loc[:-2], loc[-2])
            problems.append((field_path(loc_key), _message(err)))
            continue
        problems.append((field_path(loc), _message(err)))
    # Union members of the same location can repeat a message; keep the first of each.
    return list(dict.fromkeys(problems))
