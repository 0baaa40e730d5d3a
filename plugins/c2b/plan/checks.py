"""Check a plan against the repository: its segment files and its message templates.

A segment file declares its interface in header comments, which these checks read (the SQL text is
never run here, so they are safe and fast at DAG parse time)::

    -- params: reason (text: price_too_low, data_privacy_worry), days (integer)
    -- columns: uid, nickname, city, timezone, last_item

``params`` lists each ``:placeholder`` with its type (``text``, ``integer``, ``numeric``,
``boolean``, ``date``, ``timestamp``) and, for text, optionally the allowed values after a colon;
after a comma comes a note, e.g. ``max_score (integer, 0-10)`` (a range is checked, also among
other notes: ``min_price (numeric, CNY, 0-100000000)``); numbers must be finite and fit the SQL type
segments cast them to (:func:`number_problem`). ``columns``
lists what the query returns; templates may read those plus the built-ins
(:data:`c2b.plan.templates.BUILTIN_NAMES`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from c2b.audience.sql import placeholders, segment_path
from c2b.plan.errors import join_key
from c2b.plan.model import ALL_USERS_SEGMENT, Plan, Touch
from c2b.settings import sql_dir

OFFER_FIELDS = ("type", "amount", "currency", "link")
_PARAM_ITEM = re.compile(r"^([A-Za-z_]\w*)\s*(?:\(\s*([A-Za-z]\w*)\s*(?:([:,])\s*(.*?))?\s*\))?$", re.DOTALL)
_RANGE = re.compile(r"^(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)$")
_TYPE_ALIASES = {
    "text": "text", "string": "text", "varchar": "text", "str": "text",
    "integer": "integer", "int": "integer", "bigint": "integer", "smallint": "integer",
    "numeric": "numeric", "decimal": "numeric", "number": "numeric", "float": "numeric", "double": "numeric",
    "boolean": "boolean", "bool": "boolean", "date": "date", "timestamp": "timestamp",
}


@dataclass(frozen=True)
class ParamSpec:
    """One declared segment parameter: ``name (type: choice, choice)``."""

    name: str
    type: str | None = None
    choices: tuple[str, ...] = ()
    note: str = ""  # after a comma: a range like 0-10 (checked for numbers) or a unit like CNY

    def describe(self) -> str:
        if not self.type:
            return self.name
        if self.choices:
            return f"{self.name} ({self.type}: {', '.join(self.choices)})"
        return f"{self.name} ({self.type}{', ' + self.note if self.note else ''})"

    def check(self, value: Any) -> str | None:
        """Return what is wrong with ``value`` for this parameter, or None."""
        kind = _TYPE_ALIASES.get((self.type or "").lower())
        ok = {
            "text": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "numeric": isinstance(value, int | float) and not isinstance(value, bool),
            "boolean": isinstance(value, bool),
            "date": isinstance(value, date) and not isinstance(value, datetime) or _iso(value, date),
            "timestamp": isinstance(value, date) or _iso(value, datetime),
        }.get(kind or "", True)
        if not ok:
            example = {"text": "text", "integer": "a whole number", "numeric": "a number",
                       "boolean": "true or false", "date": "a date like 2026-01-31",
                       "timestamp": "a date or timestamp like 2026-01-31T09:00:00"}[kind or "text"]
            return f"must be {example} (declared {self.describe()})"
        if kind in ("integer", "numeric"):
            wrong = number_problem(kind, value, self.note)
            if wrong:
                return f"{wrong} (declared {self.describe()})"
        if self.choices and str(value) not in self.choices:
            hint = difflib.get_close_matches(str(value), self.choices, n=1)
            return (f"{value!r} is not allowed{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                    f"use one of: {', '.join(self.choices)}")
        return None


# What a bound SQL parameter can hold whatever the header says: segments CAST integers to INTEGER
# (32-bit) and numbers to NUMERIC (DuckDB's NUMERIC is DECIMAL(18,3)); a value outside fails in
# the warehouse at run time, after validation said yes (issue #11.7).
SQL_INTEGER = (-(2**31), 2**31 - 1)
SQL_NUMERIC_ABS = 1e15


def number_problem(kind: str, value: Any, note: str = "") -> str | None:
    """Return why a number cannot be bound as an ``integer``/``numeric`` segment param, or None.

    Checks finiteness (``.nan``, ``.inf``), what the SQL type holds, and a range the header's note
    declares (``days (integer, 1-3650)``, ``min_price (numeric, CNY, 0-100000000)``).
    """
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if kind == "integer" and not SQL_INTEGER[0] <= value <= SQL_INTEGER[1]:
        return f"must fit a SQL INTEGER ({SQL_INTEGER[0]} to {SQL_INTEGER[1]}), got {value}"
    if kind == "numeric" and abs(value) >= SQL_NUMERIC_ABS:
        return f"must be below {SQL_NUMERIC_ABS:.0e} in size (a SQL NUMERIC), got {value}"
    for part in note.split(","):
        bounds = _RANGE.match(part.strip())
        if bounds and not float(bounds.group(1)) <= value <= float(bounds.group(2)):
            return f"must be from {bounds.group(1)} to {bounds.group(2)}"
    return None


def _iso(value: Any, kind: type) -> bool:
    if not isinstance(value, str):
        return False
    try:
        (date.fromisoformat if kind is date else datetime.fromisoformat)(value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class SegmentSpec:
    """What a segment file declares and uses; ``None`` means the header line is missing."""

    name: str
    params: dict[str, ParamSpec] | None
    columns: tuple[str, ...] | None
    placeholders: frozenset[str] = field(default_factory=frozenset)

    def params_help(self) -> str:
        if not self.params:
            return "it takes no params"
        return "its params: " + ", ".join(p.describe() for p in self.params.values())


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return [s for s in out if s]


def parse_header(sql: str, name: str = "") -> SegmentSpec:
    """Return the params and columns a segment's leading ``--`` comments declare."""
    params: dict[str, ParamSpec] | None = None
    columns: tuple[str, ...] | None = None
    for raw in sql.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break
        body = line[2:].strip()
        key, _, rest = body.partition(":")
        key = key.strip().lower()
        if key == "params" and _:
            params = {}
            if rest.strip().lower() not in ("", "none", "(none)", "-"):
                for item in _split_top(rest):
                    m = _PARAM_ITEM.match(item)
                    if not m:
                        raise ValueError(f"cannot read param {item!r} in '-- params:'; write name (type), "
                                         "name (type, note) or name (text: a, b)")
                    extra = (m.group(4) or "").strip()
                    if m.group(3) == ":":
                        choices = tuple(c.strip() for c in extra.split(",") if c.strip())
                        params[m.group(1)] = ParamSpec(m.group(1), m.group(2), choices)
                    else:
                        params[m.group(1)] = ParamSpec(m.group(1), m.group(2), note=extra)
        elif key == "columns" and _:
            columns = tuple(c.strip() for c in rest.split(",") if c.strip())
    return SegmentSpec(name, params, columns, frozenset(placeholders(sql)))


@lru_cache(maxsize=256)
def _spec_cached(data: bytes, name: str) -> SegmentSpec:
    # As read_text does: strict UTF-8, universal newlines.
    text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    return parse_header(text, name)


def read_segment(name: str) -> SegmentSpec:
    """Return the spec of segment file ``name`` (cached per file content).

    Raises ``FileNotFoundError`` when it does not exist under the segments folder and
    ``ValueError`` when its header cannot be read.
    """
    base = sql_dir() / "segments"
    path = segment_path(name)
    if not os.path.normpath(path).startswith(os.path.normpath(base) + os.sep):
        raise FileNotFoundError(name)
    with open(path, "rb") as f:  # FileNotFoundError when missing
        data = f.read()
    return _spec_cached(data, name)


def available_segments() -> list[str]:
    base = sql_dir() / "segments"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*.sql")) if base.is_dir() else []


def segment_problems(name: str, params: dict[str, Any], where: str) -> tuple[SegmentSpec | None, list[tuple[str, str]]]:
    """Check one segment reference (``where`` is its field path prefix, e.g. ``audience``)."""
    try:
        spec = read_segment(name)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        names = available_segments()
        hint = difflib.get_close_matches(name, names, n=1)
        return None, [(f"{where}.segment",
                       f"no segment file include/sql/segments/{name}"
                       f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; segments: {', '.join(names) or 'none'}")]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [(f"{where}.segment", f"cannot read include/sql/segments/{name}: {exc}")]
    problems = segment_param_problems(spec, name, params, where, "segment")
    if spec.columns is not None and "uid" not in spec.columns:
        problems.append((f"{where}.segment", f"{name} must return a uid column; its '-- columns:' header lists "
                                             f"{', '.join(spec.columns) or 'none'}"))
    return spec, problems


def segment_param_problems(spec: SegmentSpec, name: str, params: dict[str, Any], where: str, file_field: str,
                           supplied: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Check a SQL file's declared params against its placeholders and the values a plan gives.

    ``file_field`` names the plan field holding the file (``segment``, or ``sql`` for a goal);
    ``supplied`` are params the engine binds itself (never missing from the plan).
    """
    problems: list[tuple[str, str]] = []
    declared = spec.params if spec.params is not None else {}
    if spec.params is None and spec.placeholders:
        problems.append((f"{where}.{file_field}", f"{name} uses {_names(spec.placeholders)} but has no '-- params:' "
                                                  "header; declare them, e.g. '-- params: days (integer)'"))
    elif set(declared) != spec.placeholders:
        problems.append((f"{where}.{file_field}", f"{name} declares params {_names(declared) or 'none'} but its SQL "
                                                  f"uses {_names(spec.placeholders) or 'none'}; fix its '-- params:' "
                                                  "header"))
    missing = sorted(spec.placeholders - set(params) - supplied)
    if missing:
        problems.append((f"{where}.params", f"missing {', '.join(missing)}; {name} needs them "
                                            f"({spec.params_help()})"))
    for key, value in params.items():
        if key not in spec.placeholders:
            problems.append((join_key(f"{where}.params", key),
                             f"{name} has no placeholder :{str(key)!r}{_hint(str(key), spec.placeholders)}; "
                             f"{spec.params_help()}"))
        elif key in declared:
            wrong = declared[key].check(value)
            if wrong:
                problems.append((join_key(f"{where}.params", key), wrong))
    return problems


def _names(names: Any) -> str:
    return ", ".join(f":{n}" for n in sorted(names))


def template_problems(touch: Touch, i: int, columns: tuple[str, ...], segment: str) -> list[tuple[str, str]]:
    """Check that a touch's template compiles in the sandbox and reads only known names.

    The template is parsed (syntax errors, with their template line), its filters and tests must
    exist in the sandbox, and every name it reads must be a segment column, a built-in or a Jinja
    global. A message template is checked in one walk of its syntax tree; one with macros, blocks
    or imports goes through Jinja's code generator, which resolves their scopes.
    """
    from jinja2 import TemplateError, TemplateSyntaxError, meta, nodes

    from c2b.plan import templates
    from c2b.plan.template_limits import ast_problems

    env = templates._ENV  # the sandbox the delivery renders with (its filters and tests)
    where = f"touches[{i}].template"
    try:
        ast = env.parse(touch.template)
    except TemplateSyntaxError as exc:
        return [(where, f"does not compile: {exc.message} (template line {exc.lineno}); see Jinja syntax")]
    except Exception as exc:  # noqa: BLE001 - e.g. RecursionError on absurd nesting
        return [(where, f"does not compile: {exc}")]
    problems: list[tuple[str, str]] = [(where, p) for p in ast_problems(ast)]
    loads: set[str] = set()
    stores: set[str] = set()
    attrs: list[tuple[str, str]] = []
    scoped = looped = False
    stack: list[Any] = [ast]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is nodes.Name:
            (loads if node.ctx == "load" else stores).add(node.name)
        elif kind is nodes.Getattr and type(node.node) is nodes.Name:
            attrs.append((node.node.name, node.attr))
        elif kind is nodes.Filter and node.name not in env.filters:
            problems.append((where, f"unknown filter {node.name!r}{_hint(node.name, env.filters)}"))
        elif kind is nodes.Test and node.name not in env.tests:
            problems.append((where, f"unknown test {node.name!r}{_hint(node.name, env.tests)}"))
        elif kind is nodes.For:
            looped = True
        elif kind in _scoped_nodes():
            scoped = True
        stack.extend(node.iter_child_nodes())
    if problems:
        return problems
    read: set[str] | frozenset[str]
    if scoped:
        try:
            read = meta.find_undeclared_variables(ast)
        except TemplateError as exc:
            return [(where, f"does not compile: {exc.message}; see Jinja syntax")]
    else:
        read = loads - stores - ({"loop"} if looped else set())
    return _read_problems(read, attrs, touch, columns, segment, where)


def _read_problems(names: Any, attrs: list[tuple[str, str]], touch: Touch, columns: tuple[str, ...], segment: str,
                   where: str) -> list[tuple[str, str]]:
    """Return the problems of the names and ``owner.attr`` reads of a touch's template."""
    from c2b.plan import templates

    problems: list[tuple[str, str]] = []
    known = set(columns) | set(templates.BUILTIN_NAMES) | set(templates._ENV.globals)
    for name in sorted(names):
        if name not in known:
            problems.append((where, f"unknown attribute {name!r}{_hint(name, known)}; {segment} gives "
                                    f"{', '.join(columns)}; built-ins: {', '.join(sorted(templates.BUILTIN_NAMES))}"))
    for owner, attr in attrs:
        if owner == "offer":
            if touch.offer is None:
                problems.append((where, f"reads offer.{attr} but the touch has no offer; add 'offer:' or remove it"))
            elif attr not in OFFER_FIELDS:
                problems.append((where, f"offer has no {attr!r}{_hint(attr, OFFER_FIELDS)}; "
                                        f"offer fields: {', '.join(OFFER_FIELDS)}"))
            elif getattr(touch.offer, attr) is None:
                problems.append((where, f"reads offer.{attr} but the offer sets no {attr}"))
        elif owner == "assets" and attr not in touch.assets:
            problems.append((where, f"reads assets.{attr} but the touch's assets are "
                                    f"{', '.join(touch.assets) or 'empty'}; add assets.{attr}"))
    return list(dict.fromkeys(problems))


@lru_cache(maxsize=1)
def _scoped_nodes() -> frozenset[type]:
    """Jinja node types that open scopes (names set inside do not leak out)."""
    from jinja2 import nodes

    return frozenset({nodes.Macro, nodes.CallBlock, nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends,
                      nodes.Block, nodes.Scope, nodes.OverlayScope, nodes.With, nodes.FilterBlock})


def _hint(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def repository_problems(plan: Plan) -> list[tuple[str, str]]:
    """Return every problem of ``plan`` against the segment library and the template sandbox."""
    aud = plan.audience
    spec, problems = segment_problems(aud.segment or ALL_USERS_SEGMENT, dict(aud.params), "audience")
    specs = [spec]
    for j, item in enumerate(aud.exclude):
        if item.segment is not None:
            excluded, more = segment_problems(item.segment, dict(item.params), f"audience.exclude[{j}]")
            specs.append(excluded)
            problems += more
    if spec is not None:
        if spec.columns is None:
            problems.append(("audience.segment", f"{spec.name} has no '-- columns:' header; declare what it returns "
                                                 "(e.g. '-- columns: uid, nickname') so templates can be checked"))
        else:
            for i, touch in enumerate(plan.touches):
                problems += template_problems(touch, i, spec.columns, spec.name)
    if plan.goal is not None:
        from c2b.plan.goal import goal_problems

        problems += goal_problems(plan.goal, plan.has_control)
    return problems
