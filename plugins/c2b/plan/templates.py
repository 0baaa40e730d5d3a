"""Message templates: Jinja in a sandbox, so a plan file cannot reach Python internals."""

from __future__ import annotations

import re

from jinja2 import StrictUndefined, TemplateSyntaxError, meta

from c2b.plan.template_limits import DEFAULT_MAX_CHARS, BoundedSandbox, BoundedTemplate

# The immutable sandbox, with render limits (c2b.plan.template_limits): bounded range and '*'.
_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False)

BUILTIN_NAMES = frozenset({"uid", "variant", "offer", "assets", "plan", "touch"})


def compile_template(text: str):  # -> jinja2.Template
    """Compile a touch template (raises ``TemplateSyntaxError`` with a line number)."""
    return _ENV.from_string(text)


def compile_bounded(text: str, max_chars: int | None = None, channel: str = "") -> BoundedTemplate:
    """Compile a touch template for delivery: each message renders within ``max_chars`` (the
    channel's ``max_text_chars``) and a time limit, or fails with the reason."""
    return BoundedTemplate(compile_template(text), max_chars or DEFAULT_MAX_CHARS, channel)


def template_names(text: str) -> set[str]:
    """Return the top-level names a template reads (user attributes plus built-ins)."""
    return set(meta.find_undeclared_variables(_ENV.parse(text)))


# The common shape of a message template, recognised without Jinja's lexer and parser (which
# cost ~0.2 ms per template at every DAG parse): text, ``{{ name.attr | filter }}`` outputs and
# ``{% if %}/{% elif %}/{% else %}/{% endif %}`` on such expressions. ASCII names only, no literals,
# no keywords, no whitespace control; anything else returns None and goes through Jinja.
_TAG = re.compile(r"\{\{(?P<expr>[^{}%#'\"]*?)\}\}|\{%(?P<stmt>[^{}%#'\"]*?)%\}|\{[{%#]")
_EXPR = re.compile(r"\s*([A-Za-z_]\w*)((?:\s*\.\s*[A-Za-z_]\w*)*)((?:\s*\|\s*[A-Za-z_]\w*)*)\s*", re.ASCII)
_STMT = re.compile(r"\s*(if|elif|else|endif)\b(.*)", re.ASCII | re.DOTALL)
_PATH_PART = re.compile(r"[A-Za-z_]\w*", re.ASCII)
# Words Jinja's parser gives a meaning of their own (constants, operators, statements).
_RESERVED = frozenset({
    "true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else", "elif",
    "endif", "for", "endfor", "recursive", "block", "endblock", "extends", "print", "macro", "endmacro",
    "include", "from", "import", "set", "endset", "with", "endwith", "without", "context", "ignore", "missing",
    "raw", "endraw", "filter", "endfilter", "call", "endcall", "as", "autoescape", "endautoescape",
    "scoped", "required", "do", "break", "continue", "trans", "endtrans", "pluralize"})


def _expr_reads(text: str, names: set[str], attrs: set[tuple[str, str]], filters: set[str]) -> bool:
    m = _EXPR.fullmatch(text)
    if not m:
        return False
    head = m.group(1)
    path = _PATH_PART.findall(m.group(2))
    used = _PATH_PART.findall(m.group(3))
    if head in _RESERVED or any(w in _RESERVED for w in path) or any(w in _RESERVED for w in used):
        return False
    names.add(head)
    if path:
        attrs.add((head, path[0]))  # a.b.c reads a's attribute b (then b's attribute c)
    filters.update(used)
    return True


def simple_template_reads(text: str) -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]] | None:
    """Return ``(names, (name, attr) reads, filters)`` of a template of the common shape, else None.

    For such a template, Jinja's parse succeeds and its syntax tree reads exactly these names
    (``Name`` nodes), ``name.attr`` (``Getattr`` of a ``Name``) and filters, with no tests, loops,
    assignments or scopes. Any other template (or a broken one) returns None.
    """
    names: set[str] = set()
    attrs: set[tuple[str, str]] = set()
    filters: set[str] = set()
    open_ifs: list[bool] = []  # per open if: whether its else was seen
    for m in _TAG.finditer(text):
        expr, stmt = m.group("expr"), m.group("stmt")
        if expr is not None:
            if not _expr_reads(expr, names, attrs, filters):
                return None
        elif stmt is not None:
            sm = _STMT.fullmatch(stmt)
            if not sm:
                return None
            word, rest = sm.groups()
            if word in ("if", "elif"):
                if word == "elif" and (not open_ifs or open_ifs[-1]):
                    return None
                if not _expr_reads(rest, names, attrs, filters):
                    return None
                if word == "if":
                    open_ifs.append(False)
            elif rest.strip() or not open_ifs or (word == "else" and open_ifs[-1]):
                return None
            elif word == "else":
                open_ifs[-1] = True
            else:
                open_ifs.pop()
        else:
            return None  # a {{, {% or {# this shape does not cover
    if open_ifs:
        return None
    return frozenset(names), frozenset(attrs), frozenset(filters)


__all__ = ["BUILTIN_NAMES", "TemplateSyntaxError", "compile_bounded", "compile_template", "simple_template_reads",
           "template_names"]
