"""Resource limits for message templates: what validation rejects, and what rendering bounds.

Jinja's sandbox stops a template from reaching Python internals at render time, but not from
running for a long time or building a huge string: a nested loop ran ~30 s per message, and
``{{ 'x' * 5000000 }}`` sent 5 MB messages as "sent" (issue #11.6). So:

- *At validation* (:func:`ast_problems`, :func:`name_problems`) a template is rejected for what
  its syntax tree shows: names or attributes starting with ``_`` (``__class__``: Python internals;
  the sandbox would refuse them only at render), loops nested inside loops, ``range()`` with
  bounds that are not literals or cover more than :data:`MAX_RANGE` items, loops over literal
  lists longer than that, and ``*`` / ``**`` with a literal factor above :data:`MAX_REPEAT`.
- *At render* (:class:`BoundedSandbox`, :class:`BoundedTemplate`) what depends on user data is
  bounded: ``range`` yields at most :data:`MAX_RANGE` items, ``*`` may not build a string or list
  longer than the output limit, ``lipsum`` is gone, and each message stops rendering once it is
  longer than its channel's ``max_text_chars`` or has taken :data:`RENDER_SECONDS` of its thread's CPU. The message is
  then recorded failed with the reason (``template: ...``), never sent.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from c2b.plan.template_plain import MISSING, Part, PlainRender

MAX_RANGE = 1000  # items a range() or a literal list may give a loop
MAX_REPEAT = 1000  # largest literal factor of * (and exponent of **)
MAX_LOOP_DEPTH = 1  # a loop inside a loop multiplies the work: not in a message template
RENDER_SECONDS = 0.5  # per message

# The garbage collector's CPU time per thread: a full collection that a render happens to trigger
# runs in the rendering thread and can take a large heap's worth of CPU (a 24k-user shard's test,
# late in a whole test run, failed one message "took over 0.5s" that way); it is not the template's.
_GC = threading.local()


def _gc_clock(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _GC.started = time.thread_time()
    elif hasattr(_GC, "started"):
        _GC.spent = getattr(_GC, "spent", 0.0) + time.thread_time() - _GC.started


gc.callbacks.append(_gc_clock)


def _gc_spent() -> float:
    return getattr(_GC, "spent", 0.0)
DEFAULT_MAX_CHARS = 10_000  # a channel without its own max_text_chars


class TemplateLimitError(SecurityError):
    """A message exceeded a render limit; the message says which (recorded as its failure)."""


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise TemplateLimitError(f"range of {len(r)} items is over the limit of {MAX_RANGE}")
    return r


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounded ``range`` and ``*``/``**``, and no ``lipsum``."""

    intercepted_binops = frozenset({"*", "**"})
    max_build_chars = DEFAULT_MAX_CHARS * 10  # largest string/list ``*`` may build in any template

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals.pop("lipsum", None)  # lipsum(n=...) writes as much text as asked
        self.globals["range"] = _bounded_range

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_REPEAT:
                raise TemplateLimitError(f"exponent {right} is over the limit of {MAX_REPEAT}")
            return left**right
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                size = len(seq) * times
                if size > self.max_build_chars:
                    raise TemplateLimitError(f"'*' would build {size} items, over the limit of {self.max_build_chars}")
        return left * right


class BoundedTemplate:
    """A compiled template that renders one message within a size and a time limit.

    ``plain`` (:mod:`c2b.plan.template_plain`) renders a template that is only text and plain
    substitutions without Jinja, to the same text, errors and limits, chunk by chunk.
    """

    def __init__(self, template: Any, max_chars: int, channel: str = "", seconds: float = RENDER_SECONDS,
                 plain: list[Part] | None = None) -> None:
        # Jinja keeps a template's globals as a ChainMap over the environment's, and copies them
        # into every render's context: iterating the ChainMap was ~3/4 of rendering a short
        # message. Our environment's globals are fixed once built, so a plain dict is the same
        # names at a quarter of the cost.
        template.globals = dict(template.globals)
        self.template = template
        self.max_chars = max_chars
        self.channel = channel
        self.seconds = seconds
        self.plain = PlainRender(plain, template.environment, template.globals) if plain is not None else None

    def _over_size(self) -> TemplateLimitError:
        return TemplateLimitError(f"message over the {self.channel or 'channel'} limit of "
                                  f"{self.max_chars} characters (max_text_chars)")

    def _over_time(self) -> TemplateLimitError:
        # CPU time of the rendering thread, not wall time: on a machine loaded by other work a
        # starved thread once failed a plain message for good ("took over 0.5s") while it waited.
        return TemplateLimitError(f"rendering took over {self.seconds}s of CPU")

    def render(self, values: dict[str, Any]) -> str:
        """Render, streaming: stop as soon as the text is over the limit or time is up."""
        if self.plain is not None:
            return self.render_with(values, {})
        deadline = time.thread_time() + self.seconds
        gc0 = _gc_spent()
        out: list[str] = []
        size = 0
        for chunk in self.template.generate(values):
            size += len(chunk)
            if size > self.max_chars:
                raise self._over_size()
            if time.thread_time() > deadline and time.thread_time() - (_gc_spent() - gc0) > deadline:
                raise self._over_time()
            out.append(chunk)
        return "".join(out)

    def render_with(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> str:
        """Render the values ``{**second, **first}`` without building that dict when plain."""
        plain = self.plain
        if plain is None:
            return self.render({**second, **first})
        # The loop of render() over the chunks Jinja would yield (PlainRender.chunks), inlined.
        clock = time.thread_time
        deadline = clock() + self.seconds
        gc0 = _gc_spent()
        limit = self.max_chars
        out: list[str] = []
        size = 0
        for chunk, name, attrs in plain.steps:
            if chunk is None:
                v = first.get(name, MISSING)
                if v is MISSING:
                    v = plain.missing_name(name, second)
                chunk = str(plain.follow(v, attrs) if attrs else v)
            size += len(chunk)
            if size > limit:
                raise self._over_size()
            if clock() > deadline and clock() - (_gc_spent() - gc0) > deadline:
                raise self._over_time()
            out.append(chunk)
        return "".join(out)

    def render_many(self, values: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[str | Exception]:
        """Render each ``(first, second)`` as :meth:`render_with` does; an error takes its message's place.

        Why: the time limit's clock (the thread's CPU time: a system call, ~0.7 us here) was read
        once per chunk and once per message, about as much CPU as rendering a short plain message.
        A plain template's messages are rendered here without reading it, and the batch is timed
        as a whole: a message fails for time when the CPU it took (minus garbage collection) passed
        ``seconds`` at one of its chunks, and if the whole batch took no more than that, none of
        its messages can have, so every text and every error is the one the checks per chunk give.
        Otherwise (a slow batch, or a limit already spent) every message is rendered again with
        the checks per chunk, exactly as :meth:`render_with`.
        """
        plain = self.plain
        if plain is not None and values:
            clock = time.thread_time
            start, gc0 = clock(), _gc_spent()
            out = [self._plain_unclocked(first, second) for first, second in values]
            if clock() - start - (_gc_spent() - gc0) <= self.seconds:
                return out
        return [self._render_or_error(first, second) for first, second in values]

    def _render_or_error(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> str | Exception:
        try:
            return self.render_with(first, second)
        except Exception as exc:  # noqa: BLE001 (the message's own error, handed back in its place)
            return exc

    def _plain_unclocked(self, first: Mapping[str, Any], second: Mapping[str, Any]) -> str | Exception:
        """:meth:`render_with`'s plain loop without the clock: the caller times the batch."""
        plain = self.plain
        assert plain is not None
        limit = self.max_chars
        out: list[str] = []
        size = 0
        try:
            for chunk, name, attrs in plain.steps:
                if chunk is None:
                    v = first.get(name, MISSING)
                    if v is MISSING:
                        v = plain.missing_name(name, second)
                    chunk = str(plain.follow(v, attrs) if attrs else v)
                size += len(chunk)
                if size > limit:
                    return self._over_size()
                out.append(chunk)
        except Exception as exc:  # noqa: BLE001 (as above)
            return exc
        return "".join(out)


def name_problems(names: Iterable[str], attrs: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Return the problems of names and ``owner.attr`` reads that start with ``_``."""
    out = [f"reads {n!r}: names starting with '_' are Python internals, not template data"
           for n in sorted(set(names)) if n.startswith("_")]
    out += [f"reads {o}.{a}: attributes starting with '_' are Python internals, not template data"
            for o, a in sorted(set(attrs)) if a.startswith("_")]
    return out


def _literal_int(node: nodes.Node) -> int | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, nodes.Neg):
        inner = _literal_int(node.node)
        return None if inner is None else -inner
    return None


def ast_problems(ast: nodes.Node) -> list[str]:
    """Return what makes a parsed template unsafe to render per message (see the module doc)."""
    problems: list[str] = []
    stack: list[tuple[nodes.Node, int]] = [(ast, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, nodes.Name) and node.name.startswith("_"):
            problems += name_problems([node.name])
        elif isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            problems.append(f"reads .{node.attr}: attributes starting with '_' are Python internals")
        elif (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
              and isinstance(node.arg.value, str) and node.arg.value.startswith("_")):
            problems.append(f"reads [{node.arg.value!r}]: keys starting with '_' are Python internals")
        elif isinstance(node, nodes.For):
            if depth + 1 > MAX_LOOP_DEPTH:
                problems.append("has a loop inside a loop: not allowed in a message template")
            if isinstance(node.iter, nodes.List | nodes.Tuple) and len(node.iter.items) > MAX_RANGE:
                problems.append(f"loops over a literal of {len(node.iter.items)} items (limit {MAX_RANGE})")
            if isinstance(node.iter, nodes.Const) and isinstance(node.iter.value, str) \
                    and len(node.iter.value) > MAX_RANGE:
                problems.append(f"loops over a literal of {len(node.iter.value)} items (limit {MAX_RANGE})")
            stack.extend((child, depth + 1) for child in node.iter_child_nodes())
            continue
        elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range":
            bounds = [_literal_int(a) for a in node.args]
            if node.kwargs or node.dyn_args or node.dyn_kwargs or not bounds or None in bounds:
                problems.append("calls range() with bounds that are not whole-number literals")
            else:
                try:
                    n = len(range(*bounds))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    n = 0
                if n > MAX_RANGE:
                    problems.append(f"range() of {n} items is over the limit of {MAX_RANGE}")
        elif isinstance(node, nodes.Mul | nodes.Pow):
            for side in (node.left, node.right):
                value = _literal_int(side)
                if value is None and isinstance(side, nodes.Const) and isinstance(side.value, float):
                    value = int(side.value)
                if value is not None and abs(value) > MAX_REPEAT:
                    problems.append(f"multiplies by {value}: literal factors are limited to {MAX_REPEAT}")
        stack.extend((child, depth) for child in node.iter_child_nodes())
    return list(dict.fromkeys(problems))
