"""The one line a user needs from a failed run: which task failed, and its exception's message.

``c2b demo`` runs a plan with ``dag.test()``, whose task logs (tracebacks included) go to a file;
printing "ended failed" sent users digging through it. This reads the log back and returns, per
failed task attempt, ``task_id[map_index]: ExceptionType: message`` (the message's first line),
for the CLI to print instead of a traceback.
"""

from __future__ import annotations

import re

_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")
_FAILED = "Task failed with exception"
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT")  # a new structured log line ends the traceback
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Lost|Warning)\w*)"
                        r"(?::\s*(?P<message>.*))?$")


def failed_task_errors(log_text: str) -> list[str]:
    """Return ``task: Type: message`` for every failed task attempt in a ``dag.test()`` log, in order.

    The exception shown is the last one of the traceback (the one that failed the task); repeated
    attempts failing the same way are listed once.
    """
    out: list[str] = []
    task = "?"
    lines = log_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        started = _STARTING.search(line)
        if started:
            index = started.group("index")
            task = started.group("task") + (f"[{index}]" if index != "-1" else "")
        elif _FAILED in line:
            found = ""
            i += 1
            while i < len(lines) and not _LOG_LINE.match(lines[i]):
                m = _EXCEPTION.match(lines[i])
                if m:
                    found = f"{m.group('type').rsplit('.', 1)[-1]}: {(m.group('message') or '').strip()}"
                i += 1
            entry = f"{task}: {found or 'failed (see the task log)'}"
            if entry not in out:
                out.append(entry)
            continue
        i += 1
    return out


def error_line(exc: BaseException) -> str:
    """Return ``Type: first line of the message`` of an exception (what the CLI prints)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"
