"""Loading a plan file: read the YAML, validate it as a :class:`~c2b.plan.model.Plan`, name the lines.

Everything a plan file can get wrong is raised as one :class:`~c2b.plan.errors.PlanError`. Nothing
here does warehouse, Redis or network I/O: it runs at DAG parse time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from c2b.plan.errors import PlanError, Problem, validation_problems
from c2b.plan.model import Plan


def parse_plan(data: Any, path: str | Path, *, text: str | None = None, check_files: bool = False,
               segments_used: dict[str, str] | None = None) -> Plan:
    """Validate already-loaded YAML data as a plan, raising :class:`PlanError`.

    ``text`` (the YAML source) lets errors carry line numbers. ``check_files`` also checks the plan
    against the segment library and its templates (:mod:`c2b.plan.checks`), as :func:`load_plan`
    does by default; without it, plans built in code (tests, tools) may name segments that exist
    elsewhere. ``segments_used`` collects the path and digest of each segment file the checks read
    (what :mod:`c2b.plan.cache` compares).
    """
    if not isinstance(data, dict):
        raise PlanError(path, [("", "a plan file must be a YAML mapping (id: ..., audience: ..., touches: ...)", 1)])
    problems: list[tuple[str, str]] = []
    try:
        plan = Plan.model_validate(data, context={"deferred_problems": problems})
    except ValidationError as exc:
        raise PlanError(path, with_lines(validation_problems(exc), text)) from None
    if check_files:
        from c2b.plan.checks import repository_problems

        problems += repository_problems(plan, used=segments_used)
    if problems:
        raise PlanError(path, with_lines(problems, text))
    return plan


def read_yaml(path: str | Path, text: str | None = None) -> tuple[Any, str]:
    """Return ``(data, text)`` of a YAML file, raising :class:`PlanError` when it cannot be read.

    ``text``, when given, is the file's text already read (it is not read again).
    """
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(path, [("", f"cannot read the file: {exc}")]) from None
    try:
        data = load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise PlanError(path, [("", f"not valid YAML: {what}; check indentation, colons and quotes",
                                mark.line + 1 if mark else None)]) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a date like 2026-13-45 raises ValueError in the loader
        raise PlanError(path, [("", f"not valid YAML: {exc}")]) from None
    return data, text


def load_plan(path: str | Path, *, check_name: bool = False, check_files: bool = True, text: str | None = None,
              segments_used: dict[str, str] | None = None) -> Plan:
    """Read and validate one plan file.

    ``check_name`` also requires the file to be named ``<id>.yaml`` (the factory and
    ``c2b validate`` do; that is what lets a worker build only the DAG it needs).
    ``text`` is the file's text when already read; ``segments_used`` as for :func:`parse_plan`.
    """
    path = Path(path)
    data, text = read_yaml(path, text)
    plan = parse_plan(data, path, text=text, check_files=check_files, segments_used=segments_used)
    if check_name and plan.id != path.stem:
        raise PlanError(path, with_lines([("id", f"must equal the file name: rename the file to {plan.id}.yaml "
                                                 f"or set id: {path.stem}")], text))
    return plan


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_PLAIN_SCALARS = frozenset({"tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                            "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"})


class _NotPlain(Exception):
    """The document uses YAML beyond maps, lists and plain scalars: construct it the usual way."""


def load_yaml(text: str) -> Any:
    """Return ``yaml.load(text, Loader=_LOADER)``, constructing plain documents faster.

    libyaml composes the node tree in C; PyYAML then builds Python objects from it in Python, the
    larger half of a plan's YAML time. A plan is maps, lists and scalars, which this builds in one
    loop with PyYAML's own scalar constructors. A document with anything else (anchors and
    aliases, merge keys, other tags, keys that are not scalars) goes through ``yaml.load``, so
    values and errors are always PyYAML's.
    """
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()  # syntax errors: the same exceptions as yaml.load
        if root is None:
            return None
        try:
            return _construct_plain(root, loader)
        except _NotPlain:
            pass
    finally:
        loader.dispose()
    return yaml.load(text, Loader=_LOADER)


def _construct_plain(root: Any, constructor: Any) -> Any:
    scalars = constructor.yaml_constructors
    seen: set[int] = set()

    def scalar(node: Any) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag in _PLAIN_SCALARS:
            return scalars[tag](constructor, node)
        raise _NotPlain

    def build(node: Any) -> Any:
        if id(node) in seen:
            raise _NotPlain  # an alias: one object shared by several places
        seen.add(id(node))
        kind = type(node)
        if kind is yaml.ScalarNode:
            return scalar(node)
        if kind is yaml.MappingNode and node.tag == _MAP:
            out = {}
            for key_node, value_node in node.value:
                if type(key_node) is not yaml.ScalarNode or key_node.tag == "tag:yaml.org,2002:merge":
                    raise _NotPlain
                seen.add(id(key_node))
                out[scalar(key_node)] = build(value_node)
            return out
        if kind is yaml.SequenceNode and node.tag == _SEQ:
            return [build(item) for item in node.value]
        raise _NotPlain

    return build(root)


def with_lines(problems: list[tuple[str, str]], text: str | None) -> list[Problem]:
    """Attach the YAML line of each problem's field (or of its nearest existing parent)."""
    if not text:
        return list(problems)
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except Exception:  # noqa: BLE001 - the text loaded once already; be safe anyway
        return list(problems)
    return [(p, m, _line_of(root, p)) for p, m in problems]


_PATH_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _line_of(root: Any, path: str) -> int | None:
    """Return the 1-based line of ``path`` in the composed YAML, or of its deepest existing parent."""
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for index, key in _PATH_PART.findall(path):
        if isinstance(node, yaml.SequenceNode) and index:
            if int(index) >= len(node.value):
                break
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode) and key:
            found = next(((k, v) for k, v in node.value if str(k.value) == key), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1  # the key's line: where the author looks
            node = found[1]
        else:
            break
    return line
