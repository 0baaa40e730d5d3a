"""Render the plan's JSON Schema as the Markdown field reference, ``docs/plan-reference.md``.

The field descriptions live once, in the pydantic plan model; the reference is generated from its
schema (``c2b schema --markdown``) so the manual cannot drift from what validation accepts. A unit
test fails when the committed page differs from what this renders. Pure: schema in, text out.
"""

from __future__ import annotations

import json
from typing import Any

REGENERATE = "c2b schema --markdown -o docs/plan-reference.md"
_REF = "#/$defs/"


def render_reference(schema: dict[str, Any]) -> str:
    """Return the Markdown reference: the plan's fields, then one section per nested model."""
    defs: dict[str, dict[str, Any]] = schema.get("$defs", {})
    out = [
        "# Plan field reference",
        "",
        f"<!-- Generated from the plan model's JSON Schema by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every field a plan file (`dags/plans/<id>.yaml`) may hold, with its type, default, allowed values",
        "and meaning. Unknown fields are errors. How to write a plan and what validation checks beyond",
        "single fields (segment params, templates, touch names): [plans.md](plans.md).",
    ]
    for name, where, model in _models(schema, defs):
        out += ["", f"## {name}", ""]
        if where:
            out += [f"At `{where}`.", ""]
        if model.get("description"):
            out += [_one_line(model["description"]), ""]
        out += _table(model)
    return "\n".join(out) + "\n"


def _models(schema: dict[str, Any], defs: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """The plan, then each nested model right after the model that holds it, with the path to it."""
    found: list[tuple[str, str, dict[str, Any]]] = [("Plan", "", schema)]
    seen = {"Plan"}

    def visit(path: str, model: dict[str, Any]) -> None:
        for field, prop in model.get("properties", {}).items():
            for ref, suffix in _refs(prop):
                if ref not in seen and ref in defs:
                    seen.add(ref)
                    where = f"{path}.{field}{suffix}" if path else f"{field}{suffix}"
                    found.append((ref, where, defs[ref]))
                    visit(where, defs[ref])

    visit("", schema)
    return found


def _refs(prop: dict[str, Any], suffix: str = "") -> list[tuple[str, str]]:
    """Model names a property refers to, each with the path suffix to reach it (``[]``, ``.<name>``)."""
    if "$ref" in prop:
        return [(prop["$ref"].removeprefix(_REF), suffix)]
    refs: list[tuple[str, str]] = []
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        refs += _refs(branch, suffix)
    if isinstance(prop.get("items"), dict):
        refs += _refs(prop["items"], suffix + "[]")
    if isinstance(prop.get("additionalProperties"), dict):
        refs += _refs(prop["additionalProperties"], suffix + ".<name>")
    return refs


def _table(model: dict[str, Any]) -> list[str]:
    required = set(model.get("required", []))
    rows = ["| field | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for field, prop in model.get("properties", {}).items():
        cells = (f"`{field}`", type_of(prop), _default(prop, field in required), allowed(prop),
                 _one_line(prop.get("description", "")))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows


def type_of(prop: dict[str, Any]) -> str:
    """A reader's name for a schema's type: ``integer or null``, ``list of [Touch](#touch)``."""
    if "$ref" in prop:
        name = prop["$ref"].removeprefix(_REF)
        return f"[{name}](#{name.lower()})"
    branches = prop.get("anyOf") or prop.get("oneOf")
    if branches:
        names = [type_of(b) for b in branches if b.get("type") != "null"]
        nullable = any(b.get("type") == "null" for b in branches)
        return " or ".join(dict.fromkeys(names)) + (" or null" if nullable else "")
    kind = prop.get("type")
    if kind == "array":
        return f"list of {type_of(prop['items'])}" if isinstance(prop.get("items"), dict) else "list"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"map of {type_of(values)}" if isinstance(values, dict) else "map"
    if kind == "string" and prop.get("format") in ("date", "date-time"):
        return "date" if prop["format"] == "date" else "timestamp"
    return str(kind) if kind else "any"


def allowed(prop: dict[str, Any]) -> str:
    """The schema's own constraints in words: values, ranges, lengths, sizes."""
    parts: list[str] = []
    if "const" in prop:
        parts.append(_code(prop["const"]))
    if "enum" in prop:
        parts.append(", ".join(_code(v) for v in prop["enum"]))
    bounds = [(">=", "minimum"), (">", "exclusiveMinimum"), ("<=", "maximum"), ("<", "exclusiveMaximum")]
    parts += [f"{op} {_number(prop[key])}" for op, key in bounds if key in prop]
    if "minLength" in prop or "maxLength" in prop:
        parts.append(_size(prop.get("minLength"), prop.get("maxLength"), "characters"))
    if "minItems" in prop or "maxItems" in prop:
        parts.append(_size(prop.get("minItems"), prop.get("maxItems"), "items"))
    if "minProperties" in prop or "maxProperties" in prop:
        parts.append(_size(prop.get("minProperties"), prop.get("maxProperties"), "entries"))
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    if isinstance(prop.get("propertyNames"), dict) and prop["propertyNames"].get("enum"):
        parts.append("keys: " + ", ".join(_code(v) for v in prop["propertyNames"]["enum"]))
    if isinstance(prop.get("items"), dict) and "$ref" not in prop["items"] and (each := allowed(prop["items"])):
        parts.append(f"each: {each}")
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        if "$ref" not in branch and (text := allowed(branch)):
            parts.append(text)
    return "; ".join(parts)


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" in prop:
        return _code(prop["default"])
    # pydantic leaves out defaults made by a factory: an empty list or map, or the model's defaults.
    if prop.get("type") == "array":
        return "`[]`"
    if prop.get("type") == "object":
        return "`{}`"
    if "$ref" in prop:
        return "its fields' defaults"
    return ""


def _size(low: int | None, high: int | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"{low} to {high} {unit}"
    if high is not None:
        return f"at most {high} {unit}"
    return "not empty" if low == 1 else f"at least {low} {unit}"


def _number(value: float) -> str:
    return str(value)


def _code(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) and value else f"`{json.dumps(value)}`"


def _one_line(text: str) -> str:
    """Docstring or description as one Markdown line; ``<id>`` outside code spans must not read as HTML."""
    parts = " ".join(text.replace("``", "`").split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))
