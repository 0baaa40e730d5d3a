"""Message templates: Jinja in a sandbox, so a plan file cannot reach Python internals."""

from __future__ import annotations

from jinja2 import StrictUndefined, TemplateSyntaxError, meta

from c2b.plan.template_limits import DEFAULT_MAX_CHARS, BoundedSandbox, BoundedTemplate
from c2b.plan.template_plain import plain_parts

# The immutable sandbox, with render limits (c2b.plan.template_limits): bounded range and '*'.
_ENV = BoundedSandbox(undefined=StrictUndefined, autoescape=False)

BUILTIN_NAMES = frozenset({"uid", "variant", "offer", "assets", "plan", "touch"})


def compile_template(text: str):  # -> jinja2.Template
    """Compile a touch template (raises ``TemplateSyntaxError`` with a line number)."""
    return _ENV.from_string(text)


def compile_bounded(text: str, max_chars: int | None = None, channel: str = "") -> BoundedTemplate:
    """Compile a touch template for delivery: each message renders within ``max_chars`` (the
    channel's ``max_text_chars``) and a time limit, or fails with the reason. A template of only text
    and plain substitutions renders without Jinja (c2b.plan.template_plain), to the same text."""
    plain = plain_parts(_ENV.parse(text), _ENV)
    return BoundedTemplate(compile_template(text), max_chars or DEFAULT_MAX_CHARS, channel, plain=plain)


def template_names(text: str) -> set[str]:
    """Return the top-level names a template reads (user attributes plus built-ins)."""
    return set(meta.find_undeclared_variables(_ENV.parse(text)))


__all__ = ["BUILTIN_NAMES", "TemplateSyntaxError", "compile_bounded", "compile_template", "template_names"]
