"""Plain templates render without Jinja to the same text, errors and limits as Jinja (property tests)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from c2b.plan.template_limits import BoundedTemplate
from c2b.plan.templates import _ENV, compile_bounded, compile_template
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

NAMES = ["nickname", "uid", "offer", "assets", "city", "n", "x", "range", "dict", "namespace", "missing_one"]
ATTRS = ["amount", "name", "a", "b", "items", "upper", "real", "get", "format", "missing_attr", "pop", "mro"]

# Text between substitutions: no '{' (it would open a tag); newlines, markup, unicode and '}' are fine.
text = st.text(alphabet=st.sampled_from(list("ab Z09,.!?<>&\"'}\\\n\r\t") + ["é", "中", "😀", "\u200b", "\ud800"]),
               max_size=12)
ref = st.builds(lambda name, path: ".".join([name, *path]), st.sampled_from(NAMES),
                st.lists(st.sampled_from(ATTRS), max_size=3))
subst = st.builds(lambda r, left, right: "{{" + left + " " + r + " " + right + "}}",
                  ref, st.sampled_from(["", "-"]), st.sampled_from(["", "-"]))
comment = st.just("{# a comment #}")
not_plain = st.sampled_from(["{{ n | int }}", "{{ x ~ 'y' }}", "{% if n %}yes{% endif %}", "{{ offer['a'] }}",
                             "{{ 'lit' }}", "{{ self }}", "{% raw %}{{ n }}{% endraw %}", "{{ n() }}"])
plain_template = st.lists(st.one_of(text, subst, comment), max_size=8).map("".join)
any_template = st.lists(st.one_of(text, subst, comment, not_plain), max_size=8).map("".join)

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=15), st.sampled_from(["<b>bold</b>", "&amp;", "{{ n }}", "é中😀", "a\ud800z", "x" * 80]),
    st.builds(Markup, st.sampled_from(["<i>m</i>", "&lt;"])),
)
value = st.recursive(scalar, lambda inner: st.one_of(
    st.dictionaries(st.sampled_from(ATTRS), inner, max_size=4), st.lists(inner, max_size=3)), max_leaves=8)
values = st.dictionaries(st.sampled_from(NAMES), value, max_size=6)


def _jinja(source: str, max_chars: int, seconds: float) -> BoundedTemplate:
    """The same template, always rendered by Jinja."""
    return BoundedTemplate(compile_template(source), max_chars, "sms", seconds)


def _outcome(render: Any) -> tuple[str, Any]:
    try:
        return "ok", render()
    except Exception as exc:  # noqa: BLE001 - the class and the message are what must match
        return type(exc).__name__, str(exc)


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal outcomes; a method's text names its object's address, which differs between renders
    (the sandbox wraps ``str.format`` anew each time), so addresses are left out of the comparison."""
    if a[0] == b[0] and isinstance(a[1], str) and isinstance(b[1], str):
        return _ADDRESS.sub(" at 0x_", a[1]) == _ADDRESS.sub(" at 0x_", b[1])
    return a == b or (a[0] == b[0] == "ok" and isinstance(a[1], float) and math.isnan(a[1]) and math.isnan(b[1]))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=plain_template, values=values, max_chars=st.sampled_from([1, 5, 20, 60, 10_000]),
       seconds=st.sampled_from([0.5, -1.0]))
@example(source="{{ nickname.format }}", values={}, max_chars=60, seconds=0.5)  # a CI run: addresses in the text
def test_plain_templates_render_like_jinja(source: str, values: dict[str, Any], max_chars: int,
                                           seconds: float) -> None:
    fast = compile_bounded(source, max_chars, "sms")
    fast.seconds = seconds
    assert fast.plain is not None, source
    slow = _jinja(source, max_chars, seconds)
    expected = _outcome(lambda: slow.render(values))
    assert _same(_outcome(lambda: fast.render(values)), expected), (source, values)
    # The delivery path: built-ins and attributes as two mappings, the built-ins winning.
    builtins = {k: v for k, v in values.items() if k in ("uid", "offer", "assets")}
    attrs = {k: v for k, v in values.items() if k not in builtins} | {"uid": "shadowed", "offer": 1}
    expected = _outcome(lambda: slow.render({**attrs, **builtins}))
    assert _same(_outcome(lambda: fast.render_with(builtins, attrs)), expected), (source, values)
    # A batch (the delivery path of a page): each message as render_with gives it, errors in place;
    # with seconds=-1 the batch is over its time and every message goes through the checks per chunk.
    batch = fast.render_many([(builtins, attrs), ({}, {"nickname": "Ann"}), (builtins, attrs)])
    assert len(batch) == 3
    for got, first, second in zip(batch, (builtins, {}, builtins), (attrs, {"nickname": "Ann"}, attrs), strict=True):
        want = _outcome(lambda f=first, s=second: slow.render({**s, **f}))
        outcome = (type(got).__name__, str(got)) if isinstance(got, Exception) else ("ok", got)
        assert _same(outcome, want), (source, values)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=any_template, values=values, max_chars=st.sampled_from([5, 10_000]))
def test_any_template_renders_like_jinja(source: str, values: dict[str, Any], max_chars: int) -> None:
    fast = compile_bounded(source, max_chars, "sms")
    slow = _jinja(source, max_chars, fast.seconds)
    assert _same(_outcome(lambda: fast.render(values)), _outcome(lambda: slow.render(values))), source


@pytest.mark.parametrize(("source", "plain"), [
    ("Hi {{ nickname }}, a new quote is waiting for you.", True),
    ("{{ offer.amount }} for {{ uid }}\n", True),
    ("{{- a.b.c -}} {# note #} x", True),
    ("", True),
    ("no substitutions", True),
    ("{{ n | int }}", False),
    ("{{ offer['amount'] }}", False),
    ("{% if n %}x{% endif %}", False),
    ("{{ self }}", False),
    ("{{ loop }}", False),
    ("{% set a = 1 %}{{ a }}", False),
    ("{{ 'x' }}", False),
])
def test_plain_is_decided_from_the_syntax_tree(source: str, plain: bool) -> None:
    assert (compile_bounded(source).plain is not None) is plain


def test_plain_errors_are_jinjas() -> None:
    from jinja2 import UndefinedError

    t = compile_bounded("Hi {{ nickname }} {{ offer.amount }}", max_chars=12, channel="sms")
    assert t.render({"nickname": "Ann", "offer": {"amount": 5}}) == "Hi Ann 5"
    with pytest.raises(UndefinedError, match="'nickname' is undefined"):
        t.render({"offer": {}})
    with pytest.raises(UndefinedError, match="has no attribute 'amount'"):
        t.render({"nickname": "Ann", "offer": {}})
    with pytest.raises(Exception, match="over the sms limit of 12"):
        t.render({"nickname": "Annabelle-Marie", "offer": {"amount": 5}})
    assert t.render({"nickname": None, "offer": {"amount": 1.5}}) == "Hi None 1.5"
    # A dict method is what Jinja's sandboxed getattr returns, and a mutating one is refused.
    assert compile_bounded("{{ offer.items }}").render({"offer": {}}).startswith("<built-in method items")
    with pytest.raises(Exception, match="unsafe"):
        compile_bounded("{{ offer.pop }}").render({"offer": {}})
    assert _ENV.undefined is not None
