"""Message templates: Jinja in a sandbox, so a plan file cannot reach Python internals."""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)

BUILTIN_NAMES = frozenset({"uid", "variant", "offer", "assets", "plan", "touch"})


def compile_template(text: str):  # -> jinja2.Template
    """Compile a touch template (raises ``TemplateSyntaxError`` with a line number)."""
    return _ENV.from_string(text)


def template_names(text: str) -> set[str]:
    """Return the top-level names a template reads (user attributes plus built-ins)."""
    return set(meta.find_undeclared_variables(_ENV.parse(text)))


def render(template, values: dict[str, Any]) -> str:  # type: ignore[no-untyped-def]
    return template.render(values)


__all__ = ["BUILTIN_NAMES", "TemplateSyntaxError", "compile_template", "render", "template_names"]
