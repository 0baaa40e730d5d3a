"""Templates without resource limits are rejected at validation (#11.6): what the syntax shows."""

from __future__ import annotations

import pytest
import yaml
from c2b.plan.errors import PlanError
from c2b.plan.load import parse_plan

from devtools.plan_samples import base_plan


def _errors(template: str) -> list[str]:
    data = base_plan()
    data["touches"][0]["template"] = template
    try:
        parse_plan(data, "dags/plans/sample_plan.yaml", text=yaml.safe_dump(data), check_files=True)
    except PlanError as exc:
        return [ln for ln in str(exc).splitlines() if "touches[0].template" in ln]
    return []


@pytest.mark.parametrize(("template", "text"), [
    ("{{ uid.__class__ }}", "starting with '_'"),
    ("{{ offer.__class__.__mro__ }}", "starting with '_'"),
    ("{{ _lipsum }}", "starting with '_'"),
    ("{{ offer['__class__'] }}", "starting with '_'"),
    ("{{ lipsum(n=100000) }}", "lipsum"),
    ("{% for i in range(100000) %}x{% endfor %}", "range() of 100000 items"),
    ("{% for i in range(n) %}x{% endfor %}", "not whole-number literals"),
    ("{% for i in range(9) %}{% for j in range(9) %}x{% endfor %}{% endfor %}", "loop inside a loop"),
    ("{{ 'x' * 5000000 }}", "multiplies by 5000000"),
    ("{{ 2 ** 100000 }}", "multiplies by 100000"),
])
def test_unsafe_or_unbounded_templates_are_rejected(template: str, text: str) -> None:
    lines = _errors(template)
    assert any(text in ln for ln in lines), lines


def test_ordinary_templates_still_validate() -> None:
    assert _errors("Hi {{ uid }}, +{{ offer.amount | int }} for you") == []
    assert _errors("{% for i in range(3) %}*{% endfor %} {{ uid }}") == []


def test_rendering_is_bounded_by_size() -> None:
    from c2b.plan.template_limits import TemplateLimitError
    from c2b.plan.templates import compile_bounded

    small = compile_bounded("{{ a * n }}", max_chars=50, channel="sms")
    assert small.render({"a": "ab", "n": 3}) == "ababab"
    with pytest.raises(TemplateLimitError, match="over the sms limit of 50"):
        small.render({"a": "ab", "n": 30})
    with pytest.raises(TemplateLimitError, match="'\\*' would build"):
        small.render({"a": "x", "n": 5_000_000})
    with pytest.raises(TemplateLimitError, match="range of"):
        compile_bounded("{% for i in range(n) %}{% endfor %}").render({"n": 10**9})


def test_a_garbage_collection_during_a_render_is_not_the_templates_time() -> None:
    """A full collection that a render triggers runs in the rendering thread; on a big heap it took
    over the limit once and failed a plain message for good. Its CPU time is not counted."""
    import gc
    import time

    from c2b.plan.template_limits import TemplateLimitError
    from c2b.plan.templates import compile_bounded

    heap = [[i] for i in range(1_000_000)]  # a heap whose full collection takes CPU

    class CollectsWhenPrinted:
        def __str__(self) -> str:
            gc.collect()
            return "Ann"

    class BurnsWhenPrinted:
        def __str__(self) -> str:
            end = time.thread_time() + 0.05
            while time.thread_time() < end:
                pass
            return "Bob"

    for text in ("Hi {{ name }}!", "Hi {{ name }}{% if true %}!{% endif %}"):  # plain, then Jinja
        template = compile_bounded(text, channel="sms")
        template.seconds = 0.01  # far below one full collection of the heap
        assert template.render({"name": CollectsWhenPrinted()}) == "Hi Ann!"
        with pytest.raises(TemplateLimitError, match="rendering took over"):  # its own CPU still counts
            template.render({"name": BurnsWhenPrinted()})
    del heap
