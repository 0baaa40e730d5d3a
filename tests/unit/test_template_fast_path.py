"""The template fast path reads a template exactly as Jinja's parser does, or stands aside.

``simple_template_reads`` skips Jinja's lexer and parser for the common shape of a message
template. For every template it accepts, Jinja must parse it too and read the same names,
``name.attr`` pairs and filters, with nothing else (no tests, loops, assignments, scopes); and the
plan check must give the same verdict and messages with and without the fast path.
"""

from __future__ import annotations

from typing import Any

import pytest
from c2b.plan import checks as plan_checks
from c2b.plan import templates
from c2b.plan.model import Touch
from c2b.plan.templates import simple_template_reads
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import nodes

COLUMNS = ("uid", "nickname", "city", "last_item")


def jinja_reads(text: str) -> tuple[frozenset, frozenset, frozenset] | None:
    """What Jinja's syntax tree reads, or None when it does not parse or uses more than reads."""
    try:
        ast = templates._ENV.parse(text)
    except Exception:  # noqa: BLE001
        return None
    names, attrs, filters = set(), set(), set()
    for node in ast.find_all(nodes.Node):
        kind = type(node)
        if kind is nodes.Name:
            if node.ctx != "load":
                return None
            names.add(node.name)
        elif kind is nodes.Getattr and type(node.node) is nodes.Name:
            attrs.add((node.node.name, node.attr))
        elif kind is nodes.Filter:
            filters.add(node.name)
        elif kind not in (nodes.Template, nodes.Output, nodes.TemplateData, nodes.If, nodes.Getattr):
            return None
    return frozenset(names), frozenset(attrs), frozenset(filters)


def checks(text: str, offer: bool = True) -> list[tuple[str, str]]:
    touch = Touch.model_validate({"name": "t", "channel": "outbox", "template": text,
                                  "assets": {"link": "https://example.com"},
                                  **({"offer": {"type": "red_packet", "amount": 5}} if offer else {})})
    return plan_checks.template_problems(touch, 0, COLUMNS, "x.sql")


ACCEPTED = [
    "plain text only",
    "",
    "{{ nickname }}",
    "{{nickname|title}}",
    "Hi {{ nickname | title | trim }}, {{ offer.amount | int }} {{ offer.currency }}: {{ assets.link }}",
    "{% if nickname %}{{ nickname }}, {% endif %}see {{ assets.link }}",
    "{% if a %}x{% elif b.c %}y{% else %}z{% endif %}",
    "{% if a %}{% if b %}{% endif %}{% else %}{% endif %}",
    "{{ a.b.c }}",
    "{{\n  a\n  .\n  b }}",
    "price {x} and }} and %} and #} are text",
    "{{ a }}}",
    "{{ loop }}",
    "{{ _x1 }}",
]
REJECTED = [
    "{{ }}", "{{ 'x' }}", "{{ a + b }}", "{{ a[0] }}", "{{ a.0 }}", "{{ a() }}", "{{ true }}", "{{ none }}",
    "{{ not a }}", "{{ a is defined }}", "{{- a }}", "{{ a -}}", "{%- if a %}{% endif %}", "{# c #}",
    "{% raw %}{{ a }}{% endraw %}", "{% for u in x %}{{ u }}{% endfor %}", "{% set a = 1 %}", "{% if a %}",
    "{% endif %}", "{% else %}", "{% if a %}{% else %}{% else %}{% endif %}", "{% if a %}{% else %}{% elif b %}",
    "{% endif x %}", "{% if %}{% endif %}", "{% ifa %}{% endif %}", "{{ a | default('x') }}", "{{{ a }}",
    "{{ a } b }}", "{{ a", "{% if a %}{% endif", "{{ ñame }}", "{{ a.if }}", "{{ a | f.g }}", "{{ a % b }}",
    "{% macro m() %}{% endmacro %}", "{% include 'x' %}", "{{ a if b }}",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted_templates_read_what_jinja_reads(text: str) -> None:
    fast = simple_template_reads(text)
    assert fast is not None
    assert fast == jinja_reads(text)


@pytest.mark.parametrize("text", REJECTED)
def test_other_templates_go_through_jinja(text: str) -> None:
    assert simple_template_reads(text) is None


FRAGMENTS = ["{{", "}}", "{%", "%}", "{#", "#}", " ", "\n", "|", ".", "a", "b", "nickname", "offer", "amount",
             "assets", "link", "title", "int", "nope", "if", "elif", "else", "endif", "true", "-", "'", "(", ")",
             "{", "}", "x", "0", "+", "for", "in", "is", "ñ"]
TAGGED = st.sampled_from(["{{ a }}", "{{ offer.amount | int }}", "{% if a %}", "{% else %}", "{% endif %}",
                          "{% elif b %}", "{{ nickname|title }}", "{{ assets.link }}", "{{ assets.video }}",
                          "{{ offer.link }}", "{{ nope }}", "{{ a | nofilter }}", "text "])


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), TAGGED), max_size=14).map("".join))
def test_fast_path_agrees_with_jinja(text: str) -> None:
    fast = simple_template_reads(text)
    if fast is not None:
        assert fast == jinja_reads(text), text


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), TAGGED), min_size=1, max_size=14).map("".join), st.booleans())
def test_plan_check_is_the_same_with_and_without_the_fast_path(text: str, offer: bool) -> None:
    fast = checks(text, offer)
    real = templates.simple_template_reads
    try:
        templates.simple_template_reads = lambda _text: None  # type: ignore[assignment]
        slow = checks(text, offer)
    finally:
        templates.simple_template_reads = real  # type: ignore[assignment]
    assert fast == slow, text


def test_problems_still_come_from_jinja(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template of the simple shape with a problem gets Jinja's messages, in Jinja's order."""
    text = "{{ nick_name }} {{ offer.amout }} {{ assets.image }} {{ city | titel }}"
    assert simple_template_reads(text) is not None
    problems: Any = checks(text)
    assert [m for _, m in problems] == ["unknown filter 'titel' (did you mean 'title'?)"]
    problems = checks(text.replace("titel", "title"))
    assert [m.split(";")[0] for _, m in problems] == [
        "unknown attribute 'nick_name' (did you mean 'nickname'?)",
        "reads assets.image but the touch's assets are link", "offer has no 'amout' (did you mean 'amount'?)"]
