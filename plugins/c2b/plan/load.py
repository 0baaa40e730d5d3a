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

from c2b.plan.errors import PlanError, Problem, join_key, validation_problems
from c2b.plan.model import Plan


def parse_plan(data: Any, path: str | Path, *, text: str | None = None, check_files: bool = False) -> Plan:
    """Validate already-loaded YAML data as a plan, raising :class:`PlanError`.

    ``text`` (the YAML source) lets errors carry line numbers. ``check_files`` also checks the plan
    against the segment library and its templates (:mod:`c2b.plan.checks`), as :func:`load_plan`
    does by default; without it, plans built in code (tests, tools) may name segments that exist
    elsewhere.
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

        problems += repository_problems(plan)
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
            with path.open("rb") as f:
                raw = f.read(MAX_PLAN_BYTES + 1)
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PlanError(path, [("", f"cannot read the file: {exc}")]) from None
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(path, [("", f"the file is larger than {MAX_PLAN_BYTES // 1024} KiB; a plan is a few KB: "
                                    "split it into several plans")])
    try:
        data = load_yaml(text, path)
    except PlanError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise PlanError(path, [("", f"not valid YAML: {what}; check indentation, colons and quotes",
                                mark.line + 1 if mark else None)]) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a date like 2026-13-45 raises ValueError in the loader
        raise PlanError(path, [("", f"not valid YAML: {exc}")]) from None
    return data, text


def load_plan(path: str | Path, *, check_name: bool = False, check_files: bool = True,
              text: str | None = None) -> Plan:
    """Read and validate one plan file.

    ``check_name`` also requires the file to be named ``<id>.yaml`` (the factory and
    ``c2b validate`` do; that is what lets a worker build only the DAG it needs).
    ``text`` is the file's text when already read.
    """
    path = Path(path)
    data, text = read_yaml(path, text)
    plan = parse_plan(data, path, text=text, check_files=check_files)
    if check_name and plan.id != path.stem:
        raise PlanError(path, with_lines([("id", f"must equal the file name: rename the file to {plan.id}.yaml "
                                                 f"or set id: {path.stem}")], text))
    return plan


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# A plan is a few KB; the bound keeps one huge file from costing every other plan its parse time.
MAX_PLAN_BYTES = 256 * 1024
_MERGE = "tag:yaml.org,2002:merge"


def load_yaml(text: str, path: str | Path = "<plan>") -> Any:
    """Return the data of a plan's YAML text, or raise :class:`PlanError` for what a plan may not use.

    libyaml composes the node tree first (aliases there are references to one node, so even an
    "alias bomb" composes small and fast); the tree is then checked before any value is built:

    - **anchors and aliases** (``&name`` / ``*name``) and merge keys (``<<``) are refused: a plan
      has no need for them, and a few hundred bytes of nested aliases expand to gigabytes;
    - **duplicate keys** at any level are refused, naming both lines (YAML would keep the last one
      silently: ``channel: outbox`` then ``channel: sms`` would send SMS).

    Syntax errors raise PyYAML's own exceptions (:func:`read_yaml` words them).
    """
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        problems = structure_problems(root)
        if problems:
            raise PlanError(path, problems)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def structure_problems(root: Any) -> list[tuple[str, str, int | None]]:
    """Return the aliases, merge keys and duplicate keys of a composed YAML tree, with their lines."""
    problems: list[tuple[str, str, int | None]] = []
    seen: set[int] = set()
    aliased: set[int] = set()  # nodes already reported as aliased (report each once)
    alias_help = ("YAML anchors and aliases (&name / *name) are not allowed in a plan file; "
                  "write the value out where it is used")
    stack: list[tuple[Any, str, int]] = [(root, "", root.start_mark.line + 1)]
    while stack:
        node, where, line = stack.pop()
        if id(node) in seen:  # a second reference to one node: an alias
            if id(node) not in aliased:
                aliased.add(id(node))
                problems.append((where, alias_help, line))
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            # An alias has no position of its own in the tree: name the list's line.
            stack.extend((item, f"{where}[{i}]", node.start_mark.line + 1)
                         for i, item in reversed(list(enumerate(node.value))))
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            children = []
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE:
                    problems.append((where, "merge keys (<<) are not allowed in a plan file; write the keys out",
                                     key_line))
                    continue
                if id(key_node) in seen:
                    problems.append((where, alias_help, key_line))
                    continue
                seen.add(id(key_node))
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and (key_node.tag, key) in first:
                    problems.append((join_key(where, key),
                                     f"duplicate key {key!r}: first at line {first[(key_node.tag, key)]}, again at "
                                     f"line {key_line}; a key may appear once in a mapping: remove one", key_line))
                elif key is not None:
                    first[(key_node.tag, key)] = key_line
                children.append((value_node, join_key(where, key) if key is not None else where, key_line))
            stack.extend(reversed(children))
    return sorted(problems, key=lambda p: p[2] or 0)


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
