"""The audit record of a run: which plan, segments and code ran, who started it, with what params.

Taken once when the run starts (by the extract step, so the hashes are of the files that ran)
and carried to the report in the extract's XCom (a few hundred bytes). The report stores it
under ``audit`` and the report task stores it, with the report, in the results store (table
``c2b_audit``, one row per run: :func:`audit_row` flattens it; :meth:`ResultsStore.audits` reads it
back), which ``c2b audit PLAN``, ``c2b results`` and the Results view read.

Fields: ``plan_sha256`` (the plan file's bytes), ``plan_file``, ``git_commit`` and
``git_dirty`` (of the repository holding the plan file; null without git), ``segments`` (sha256
of each segment file the plan reads: the audience and every exclusion segment), ``trigger``
(``scheduled``, ``manual``, ``asset_triggered``, ``backfill``...), ``triggered_by`` (the user name
Airflow recorded for a manual run, else the trigger), ``params`` (the run's params), ``code``
(c2b and Airflow versions and a digest of the engine's source), ``line`` (the business line),
``recorded_at`` (UTC).
"""

from __future__ import annotations

import hashlib
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from c2b.plan.model import Plan

GIT_TIMEOUT_S = 5.0


def file_sha256(path: Path) -> str | None:
    """Return the sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def git_state(path: Path) -> tuple[str | None, bool | None]:
    """Return (HEAD commit, whether ``path`` differs from it) of the repository holding ``path``."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(path.parent), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        dirty = git("status", "--porcelain", "--", path.name)
        return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def segment_files(plan: Plan) -> list[str]:
    """Return the segment files the plan reads: its audience, then every exclusion segment."""
    names = [plan.audience.segment] if getattr(plan.audience, "segment", None) else []
    names += [e.segment for e in plan.audience.exclude if e.segment]
    return list(dict.fromkeys(n for n in names if n))


def code_version() -> dict[str, str]:
    """Return the versions of the code that runs the plan."""
    from importlib import metadata

    import c2b

    engine = hashlib.sha256()
    for src in sorted(Path(c2b.__file__).parent.rglob("*.py")):
        engine.update(src.relative_to(Path(c2b.__file__).parent).as_posix().encode() + b"\0" + src.read_bytes())
    try:
        airflow_version = metadata.version("apache-airflow")
    except metadata.PackageNotFoundError:
        airflow_version = "?"
    return {"c2b": getattr(c2b, "__version__", "?"), "engine_sha256": engine.hexdigest()[:16],
            "airflow": airflow_version}


def audit_record(plan: Plan, plan_file: Path | None, *, trigger: str | None, user: str | None,
                 params: dict[str, Any] | None, line: str | None = None) -> dict[str, Any]:
    """Return the audit record of a run of ``plan`` read from ``plan_file``."""
    from c2b.audience.sql import segment_path

    commit, dirty = git_state(plan_file) if plan_file else (None, None)
    segments = {}
    for name in segment_files(plan):
        try:
            segments[name] = file_sha256(segment_path(name))
        except Exception:  # noqa: BLE001 - a bad name was already reported by validation
            segments[name] = None
    return {
        "plan": plan.id,
        "plan_file": str(plan_file) if plan_file else None,
        "plan_sha256": file_sha256(plan_file) if plan_file else None,
        "git_commit": commit,
        "git_dirty": dirty,
        "segments": segments,
        "trigger": trigger or "unknown",
        "triggered_by": user or trigger or "unknown",
        "params": _jsonable(params or {}),
        "code": code_version(),
        "line": line,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def audit_row(run_id: str, audit: dict[str, Any]) -> dict[str, Any]:
    """Return the audit record as one flat row (for the results store: one row per run)."""
    import json

    row = {k: v for k, v in audit.items() if k not in ("segments", "params", "code")}
    row.update({"run": run_id, "segments": json.dumps(audit.get("segments") or {}, sort_keys=True),
                "params": json.dumps(audit.get("params") or {}, sort_keys=True),
                "code": json.dumps(audit.get("code") or {}, sort_keys=True)})
    return row


def render_audit(audit: dict[str, Any]) -> list[str]:
    """Return the audit record as lines for the CLI and task logs."""
    commit = audit.get("git_commit")
    code = audit.get("code") or {}
    return [
        f"plan sha256 {str(audit.get('plan_sha256'))[:16]}  commit {commit[:12] if commit else 'none'}"
        + (" (plan file modified)" if audit.get("git_dirty") else ""),
        f"triggered by {audit.get('triggered_by')} ({audit.get('trigger')}), params {audit.get('params')}",
        "segments " + ", ".join(f"{k} {str(v)[:12]}" for k, v in (audit.get("segments") or {}).items()),
        f"code c2b {code.get('c2b')} engine {code.get('engine_sha256')} airflow {code.get('airflow')}"
        + (f", line {audit['line']}" if audit.get("line") else "")
        + (f", recorded {audit['recorded_at']}" if audit.get("recorded_at") else ""),
    ]


def audit_rows(reports: list[Path]) -> list[dict[str, Any]]:
    """Return the audit of each run report (oldest first; a report without one says so)."""
    import json

    out = []
    for path in reports:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append({"run": summary.get("run"), "status": summary.get("status"), **(summary.get("audit") or {})})
    return out
