"""The plan field reference (docs/plan-reference.md) is generated from the plan model's JSON Schema."""

from __future__ import annotations

from pathlib import Path

from c2b.plan.model import plan_json_schema
from c2b.plan.reference import REGENERATE, allowed, render_reference, type_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "plan-reference.md"


def test_committed_reference_is_what_the_model_generates() -> None:
    expected = render_reference(plan_json_schema())
    committed = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert committed == expected, (
        f"{DOC.relative_to(DOC.parents[1])} is stale: the plan model changed. Regenerate it with:\n    {REGENERATE}")


def test_every_field_of_every_model_has_a_row() -> None:
    schema = plan_json_schema()
    text = render_reference(schema)
    models = {"Plan": schema, **schema["$defs"]}
    for name, model in models.items():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for field in model["properties"]:
            assert f"| `{field}` |" in section, f"{name}.{field} missing from its section"


def test_nested_models_say_where_they_sit() -> None:
    text = render_reference(plan_json_schema())
    assert "## Variant\n\nAt `experiment.variants.<name>`." in text
    assert "## Offer\n\nAt `touches[].offer`." in text
    assert "## Exclusion\n\nAt `audience.exclude[]`." in text


def test_types_and_allowed_values_in_words() -> None:
    assert type_of({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}) == "integer or null"
    assert type_of({"type": "array", "items": {"$ref": "#/$defs/Touch"}}) == "list of [Touch](#touch)"
    assert type_of({"type": "object", "additionalProperties": {"$ref": "#/$defs/Variant"}}) == \
        "map of [Variant](#variant)"
    assert type_of({"type": "string", "format": "date"}) == "date"
    assert allowed({"type": "integer", "minimum": 1, "maximum": 1024}) == ">= 1; <= 1024"
    assert allowed({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]}) == "> 0"
    assert allowed({"enum": ["auto", "zset"]}) == "`auto`, `zset`"
    assert allowed({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 100}}) == \
        "each: 1 to 100 characters"


def test_defaults_from_factories_and_required_fields() -> None:
    text = render_reference(plan_json_schema())
    assert "| `id` | string | required |" in text
    assert "| `tags` | list of string | `[]` |" in text
    assert "| `shards` | integer or string | `16` | `auto` |" in text
    assert "| `description` | string | `\"\"` |" in text


def test_angle_brackets_in_descriptions_are_not_html() -> None:
    text = render_reference(plan_json_schema())
    assert "equals the file name &lt;id&gt;.yaml" in text
    assert "<channel>" not in text.replace("`c2b_<channel>`", "")
