"""Segment SQL files: one neutral placeholder style, bound by each warehouse's driver.

Segment files write parameters as ``:name``; values are always bound by the driver, never formatted
into the SQL text. :func:`bind` rewrites the placeholders to the driver's DB-API ``paramstyle``
(DuckDB takes ``$name``, psycopg2 ``%(name)s``, sqlite3 ``?``...) and returns the values in the
shape that style needs. Each file starts with a comment header that documents it::

    -- What the segment returns, in a sentence or two.
    -- params: reason (text: price_too_low, ...), days (integer)
    -- columns: uid, nickname, city, ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2b.settings import sql_dir

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
_LITERAL_OR_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", re.S)
_HEADER_PARAM = re.compile(r"([A-Za-z_]\w*)\s*\(([^)]*)\)")
PARAMSTYLES = ("dollar", "pyformat", "named", "qmark", "format", "numeric")


class SegmentError(ValueError):
    """A segment file is missing, or the plan's params do not match what it declares."""


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment file's header says: its purpose, params (name -> type) and columns."""

    name: str
    description: str
    params: dict[str, str] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)


def segment_path(name: str) -> Path:
    """Return the path of segment file ``name`` under ``include/sql/segments/``."""
    return sql_dir() / "segments" / name


def read_segment(name: str) -> str:
    """Return the SQL text of segment ``name``, or raise :class:`SegmentError` listing the library."""
    path = segment_path(name)
    root = (sql_dir() / "segments").resolve()
    if not path.resolve().is_relative_to(root) or not path.is_file():
        known = ", ".join(sorted(p.name for p in root.glob("*.sql"))) if root.is_dir() else "(none)"
        raise SegmentError(f"segment {name!r} not found in {root}; known segments: {known}")
    return path.read_text(encoding="utf-8")


def segment_info(name: str) -> SegmentInfo:
    """Parse the comment header of segment ``name``."""
    description: list[str] = []
    params: dict[str, str] = {}
    columns: list[str] = []
    for line in read_segment(name).splitlines():
        if not line.startswith("--"):
            break
        text = line[2:].strip()
        if text.startswith("params:"):
            params = {m.group(1): m.group(2).strip() for m in _HEADER_PARAM.finditer(text[7:])}
        elif text.startswith("columns:"):
            columns = [c.strip() for c in text[8:].split(",") if c.strip()]
        else:
            description.append(text)
    return SegmentInfo(name, " ".join(description).strip(), params, columns)


def _split(sql: str) -> list[tuple[bool, str]]:
    """Split SQL into (is_code, text) pieces; literals, quoted names and comments are not code."""
    out, pos = [], 0
    for m in _LITERAL_OR_COMMENT.finditer(sql):
        out.append((True, sql[pos:m.start()]))
        out.append((False, m.group(0)))
        pos = m.end()
    out.append((True, sql[pos:]))
    return out


def placeholders(sql: str) -> list[str]:
    """Return the parameter names a SQL text uses, in order of first use."""
    seen: dict[str, None] = {}
    for is_code, text in _split(sql):
        if is_code:
            for name in _PLACEHOLDER.findall(text):
                seen.setdefault(name, None)
    return list(seen)


def check_params(segment: str, sql: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`SegmentError` when ``params`` miss a placeholder of ``sql`` or name an unknown one."""
    used = placeholders(sql)
    missing = [p for p in used if p not in params]
    unknown = sorted(set(params) - set(used))
    problems = []
    if missing:
        problems.append(f"missing param(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown param(s) {', '.join(unknown)}")
    if problems:
        raise SegmentError(f"segment {segment}: {'; '.join(problems)} "
                           f"(it takes: {', '.join(used) or 'no params'})")


def bind(sql: str, params: Mapping[str, Any], style: str) -> tuple[str, dict[str, Any] | list[Any]]:
    """Rewrite ``:name`` placeholders for a DB-API ``paramstyle``; return ``(sql, parameters)``.

    Named styles get a dict of the names used; positional styles (``qmark``, ``format``,
    ``numeric``) get a list in placeholder order, repeating a value a name is used twice.
    """
    if style not in PARAMSTYLES:
        raise ValueError(f"unknown paramstyle {style!r}; known: {', '.join(PARAMSTYLES)}")
    order: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in params:
            raise SegmentError(f"no value for param {name!r}")
        order.append(name)
        if style == "dollar":
            return f"${name}"
        if style == "pyformat":
            return f"%({name})s"
        if style == "named":
            return f":{name}"
        if style == "qmark":
            return "?"
        if style == "format":
            return "%s"
        return f":{len(order)}"

    pieces = []
    for is_code, text in _split(sql):
        if style in ("pyformat", "format"):
            text = text.replace("%", "%%")  # these drivers scan literals and comments too
        pieces.append(_PLACEHOLDER.sub(repl, text) if is_code else text)
    out = "".join(pieces)
    if style in ("dollar", "pyformat", "named"):
        return out, {name: params[name] for name in dict.fromkeys(order)}
    return out, [params[name] for name in order]
