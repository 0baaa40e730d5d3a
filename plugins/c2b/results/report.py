"""Run reports: per-shard stats reduced to one summary per variant x touch x outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any


def summarize(plan_id: str, run_id: str, extract: dict[str, Any], shard_stats: Iterable[dict[str, Any]],
              shards_loaded: list[int], started_at: float | None = None,
              finished_at: float | None = None) -> dict[str, Any]:
    """Return the run summary (JSON-able): audience counts, outcomes, stopped shards, failures.

    ``status``: ``stopped`` (a kill switch), ``incomplete`` (a loaded shard has no stats or paged
    fewer users than it was loaded with), else ``complete``.
    """
    counts: Counter = Counter()
    failures: Counter = Counter()
    users = 0
    waiting = parked = 0  # quiet hours: messages still waiting / ever parked (c2b.delivery.shard)
    stopped = []
    short = []  # shards that paged fewer users than were loaded into them
    delivered_shards = []
    for st in shard_stats:
        if not st:
            continue
        counts.update(st["counts"])
        failures.update(st["failures"])
        users += st["users"]
        waiting += st.get("deferred", 0)
        parked += st.get("deferred_total", 0)
        delivered_shards.append(st["shard"])
        if st["stopped"]:
            stopped.append(st["shard"])
        elif "loaded" in st and st["users"] < st["loaded"]:
            short.append(st["shard"])
    # Complete means every loaded shard reported and paged every user it was loaded with; a shard
    # whose keys vanished (Redis wiped) pages nothing more and must never read as done.
    incomplete = sorted(set(short) | (set(shards_loaded) - set(delivered_shards)))
    per_touch: dict[str, dict[str, int]] = {}
    for key, n in counts.items():
        _variant, touch, outcome = key.split("|")
        per_touch.setdefault(touch, Counter())[outcome] += n  # type: ignore[index]
    return {
        "plan": plan_id,
        "run": run_id,
        "audience": extract["counts"],
        "staging_path": extract["path"],
        "shards": {"loaded": shards_loaded, "delivered": sorted(delivered_shards), "stopped": sorted(stopped),
                   "incomplete": incomplete},
        "users_paged": users,
        "outcomes": dict(sorted(counts.items())),
        "per_touch": {t: dict(c) for t, c in sorted(per_touch.items())},
        "failures": dict(failures.most_common(20)),
        "quiet_hours": {"waiting": waiting, "deferred_total": parked},
        "status": "stopped" if stopped else "incomplete" if incomplete else "complete",
        "seconds": round(finished_at - started_at, 3) if started_at and finished_at else None,
    }


def format_table(summary: dict[str, Any]) -> str:
    """Return the outcomes as an aligned text table for task logs and the CLI."""
    rows = [("variant", "touch", "outcome", "messages")]
    for key, n in summary["outcomes"].items():
        rows.append((*key.split("|"), str(n)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def write_report(summary: dict[str, Any], folder: Any) -> Any:
    """Store the summary as ``<folder>/<plan>/<run>.json`` (read by the CLI and the UI).

    ``folder`` is a local path or an ``ObjectStoragePath`` (:func:`c2b.settings.reports_dir`); the
    report appears whole or not at all (:func:`c2b.storage.write_json`)."""
    from c2b import storage
    from c2b.settings import safe_name

    path = folder / summary["plan"] / f"{safe_name(summary['run'])}.json"
    storage.write_json(path, summary, indent=2, sort_keys=True)
    return path
