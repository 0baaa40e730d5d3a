"""Plain templates: text and ``{{ name }}`` / ``{{ name.attr... }}`` only, rendered without Jinja.

Most message templates are a sentence with a nickname in it. Jinja renders one in ~40 µs (a new
context holding every global, a generator, the sandbox's attribute lookup), which alone is more
than the whole per-message budget of a 10M-user run. A template whose parsed syntax tree is only
template data and plain substitutions is rendered here instead, by the very steps the code Jinja
generates for it would take (see ``Environment.compile(..., raw=True)``):

- a name is looked up in the render's values, then in the template's globals, and is the
  environment's ``undefined(name=...)`` when in neither (``StrictUndefined``: ``str()`` raises
  ``UndefinedError`` with Jinja's message);
- each ``.attr`` goes through the environment's own ``getattr`` (the sandbox's checks included);
  a plain ``dict`` is read by key directly when ``dict`` has no attribute of that name, which is
  exactly what that ``getattr`` would return;
- each substitution is output as ``str(value)``, runs of template data as one chunk, in order, so
  the caller's per-chunk limits (size, time) see the same chunks in the same order.

The decision is made once per template, from the syntax tree (never from the source text), and
only for an environment whose output is plain ``str()`` (no autoescape, no finalize, not async);
anything else (filters, tests, expressions, blocks, loops, ``self``...) is rendered by Jinja.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from jinja2 import nodes

# Names the code generator treats specially, not as a lookup in the context.
_SPECIAL_NAMES = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs"})
MISSING = _MISSING = object()

Part = str | tuple[str, tuple[str, ...]]  # template data, or (name, attribute path)


def _chain(node: nodes.Node) -> tuple[str, tuple[str, ...]] | None:
    """Return ``(name, attrs)`` of ``name.a.b``, or None when ``node`` is anything else."""
    attrs: list[str] = []
    while isinstance(node, nodes.Getattr):
        if node.ctx != "load":
            return None
        attrs.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load" or node.name in _SPECIAL_NAMES:
        return None
    return node.name, tuple(reversed(attrs))


def plain_parts(ast: nodes.Template, env: Any) -> list[Part] | None:
    """Return the output parts of a plain template (runs of data joined), or None if not plain."""
    if env.autoescape or env.finalize is not None or env.is_async or not env.optimized:
        return None
    parts: list[Part] = []
    for stmt in ast.body:
        if type(stmt) is not nodes.Output:
            return None
        for child in stmt.nodes:
            if type(child) is nodes.TemplateData:
                if parts and isinstance(parts[-1], str):
                    parts[-1] += child.data
                else:
                    parts.append(child.data)
                continue
            ref = _chain(child)
            if ref is None:
                return None
            parts.append(ref)
    return parts


class PlainRender:
    """Render a plain template's parts from up to two mappings (the first wins), as Jinja would."""

    def __init__(self, parts: list[Part], env: Any, template_globals: Mapping[str, Any]) -> None:
        self.parts = parts
        self.globals = template_globals
        self.undefined = env.undefined
        self.getattr: Callable[[Any, str], Any] = env.getattr
        dict_attrs = set(dir(dict))
        # Per part: (text, None, ()) for template data, (None, name, attrs) for a substitution.
        self.steps: list[tuple[str | None, str, tuple[str, ...]]] = [
            (p, "", ()) if isinstance(p, str) else (None, p[0], p[1]) for p in parts]
        # Per attribute: may a plain dict be read by key (no dict attribute of that name)?
        self.by_key = {a: a not in dict_attrs for p in parts if not isinstance(p, str) for a in p[1]}

    def missing_name(self, name: str, second: Mapping[str, Any]) -> Any:
        """Return ``name`` from ``second``, else the template's globals, else Jinja's undefined."""
        v = second.get(name, _MISSING)
        if v is _MISSING:
            v = self.globals.get(name, _MISSING)
            if v is _MISSING:
                v = self.undefined(name=name)
        return v

    def follow(self, v: Any, attrs: tuple[str, ...]) -> Any:
        """Return ``v.a.b...`` as the sandbox's ``getattr`` reads each step."""
        for a in attrs:
            if type(v) is dict and self.by_key[a]:
                got = v.get(a, _MISSING)
                if got is not _MISSING:
                    v = got
                    continue
            v = self.getattr(v, a)
        return v

    def chunks(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> Iterator[str]:
        """Yield the chunks Jinja's ``generate`` would yield for values ``{**second, **first}``."""
        for text, name, attrs in self.steps:
            if text is not None:
                yield text
                continue
            v = first.get(name, _MISSING)
            if v is _MISSING:
                v = self.missing_name(name, second)
            yield str(self.follow(v, attrs) if attrs else v)
