"""Segment SQL files: one neutral placeholder style, translated per warehouse driver.

Segment files write parameters as ``:name``; values are always bound by the driver, never formatted
into the SQL text. DuckDB takes ``$name``, psycopg2 ``%(name)s``.
"""

from __future__ import annotations

import re
from pathlib import Path

from c2b.settings import sql_dir

_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


def segment_path(name: str) -> Path:
    """Return the path of segment file ``name`` under ``include/sql/segments/``."""
    return sql_dir() / "segments" / name


def placeholders(sql: str) -> set[str]:
    """Return the parameter names a SQL text uses."""
    return set(_PLACEHOLDER.findall(_strip_comments_and_strings(sql)))


def _strip_comments_and_strings(sql: str) -> str:
    return re.sub(r"--[^\n]*|'(?:[^']|'')*'", " ", sql)


def to_paramstyle(sql: str, style: str) -> str:
    """Rewrite ``:name`` placeholders to the driver's style: ``dollar`` or ``pyformat``."""
    if style == "dollar":
        repl = r"$\1"
    elif style == "pyformat":
        sql = sql.replace("%", "%%")
        repl = r"%(\1)s"
    else:
        raise ValueError(f"unknown paramstyle {style!r}")
    # Only rewrite outside string literals and comments.
    out, pos = [], 0
    for m in re.finditer(r"--[^\n]*|'(?:[^']|'')*'", sql):
        out.append(_PLACEHOLDER.sub(repl, sql[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_PLACEHOLDER.sub(repl, sql[pos:]))
    return "".join(out)
