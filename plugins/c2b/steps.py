"""The body of each Airflow task of a plan DAG, as plain functions of resolved resources.

The factory's task wrappers only resolve Airflow things (context, connections) and call these, so
the same steps run from tests and benchmarks without an Airflow process.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from c2b import storage
from c2b.audience.columns import template_attributes
from c2b.audience.eligibility import GlobalHoldout
from c2b.audience.extract import extract_audience
from c2b.audience.warehouse import Warehouse
from c2b.channels import Channel
from c2b.delivery.ledger_archive import archive_ledgers, ledger_shards, purge_archives, restore_ledgers
from c2b.delivery.senders import RetryPolicy
from c2b.delivery.shard import ShardDelivery
from c2b.plan.model import Plan
from c2b.results.report import format_table, summarize, write_report
from c2b.results.retention import purge_expired
from c2b.results.store import ResultsStore
from c2b.settings import reports_dir, retention_days, safe_name, staging_dir
from c2b.store.redis_retry import with_redis_retry
from c2b.store.run_meta import loaded_size
from c2b.store.shards import drop_run, load_shards, read_layout

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)


def staging_path(plan: Plan, run_id: str) -> ObjectStoragePath:
    """Return the run's staging file under the run artifacts' storage (:mod:`c2b.storage`)."""
    return staging_dir() / plan.id / f"{safe_name(run_id)}.parquet"


def extract_marker(staging: ObjectStoragePath) -> ObjectStoragePath:
    """Return the extract's marker beside its staging file (written after it, see step_extract)."""
    return staging.parent / f"{staging.name}.extract.json"


def attribute_columns(plan: Plan) -> list[str]:
    """Return the user attributes the plan's templates read (only these are stored in Redis)."""
    return template_attributes(plan)


def stored_columns(plan: Plan, staging: Any) -> list[str]:
    """Return the attributes kept in Redis: those templates read, plus ``timezone`` when the
    segment has it (quiet hours and the frequency cap's day are local to the user)."""
    import pyarrow.parquet as pq

    names = attribute_columns(plan)
    if "timezone" not in names:
        with storage.arrow_source(staging) as source, storage.guard("reading", staging):
            if "timezone" in pq.read_schema(source).names:
                names.append("timezone")
    return names


def step_extract(plan: Plan, run_id: str, warehouse: Warehouse, sample: int | None = None,
                 redis: Any = None, holdout: GlobalHoldout | None = None,
                 audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """Extract the audience once per run; the XCom carries the run's ``audit`` record on to the report.

    A retried or cleared extract of the same run returns what the first complete extract found
    (kept beside the staging file): the run's own sends must not turn its users away as
    ``not_reentered``, and the loaded shards hold that first audience anyway.
    """
    path = staging_path(plan, run_id)
    done = extract_marker(path)
    # The marker is written only after the whole staging file: both present = a complete extract.
    if storage.exists(done) and storage.exists(path):
        log.info("reusing the audience this run extracted before (%s)", done)
        return storage.read_json(done)
    result = extract_audience(plan, warehouse, path, sample=sample, redis=redis, holdout=holdout)
    out = {**result.to_xcom(), "started_at": time.time(), **({"audit": audit} if audit else {})}
    storage.write_json(done, out)
    return out


def task_units(shards: list[int], per_task: int) -> list[int] | list[list[int]]:
    """Return what the ``deliver`` tasks map over: the shards, or groups of ``per_task`` shards.

    With ``delivery.shards_per_task: 1`` (the default) every non-empty shard is its own mapped task;
    with more, consecutive shards share one, which sends them one after another.
    """
    if per_task <= 1:
        return list(shards)
    return [list(shards[i:i + per_task]) for i in range(0, len(shards), per_task)]


def unit_shards(unit: int | list[int]) -> list[int]:
    """Return the shards of one mapped ``deliver`` task (a shard, or a group of them)."""
    return [unit] if isinstance(unit, int) else [int(s) for s in unit]


def all_shards(units: list[Any]) -> list[int]:
    """Return every shard of ``load_shards``' output, grouped or not."""
    return [s for u in units for s in unit_shards(u)]


def unit_label(unit: int | list[int]) -> str:
    """Name a deliver task in the UI: ``shard 7``, ``shards 1-8``, ``shards 3, 5``."""
    shards = unit_shards(unit)
    if len(shards) == 1:
        return f"shard {shards[0]}"
    if shards == list(range(shards[0], shards[-1] + 1)):
        return f"shards {shards[0]}-{shards[-1]}"
    return "shards " + ", ".join(map(str, shards))


def step_load(plan: Plan, run_id: str, redis: Any, extract: dict[str, Any]) -> list[int] | list[list[int]]:
    """Load the staging file into the run's shard keys; return the non-empty shards to map over
    (grouped by ``delivery.shards_per_task``: :func:`task_units`).

    The list is at most 1024 long (the largest shard count), Airflow's ``max_map_length``.
    """
    d = plan.delivery
    # A cleared run after its cleanup: its ledger (who was sent) comes back before any shard can deliver.
    restored = restore_ledgers(redis, plan.id, run_id)
    if restored:
        log.info("this run was cleaned up before: %s ledger keys restored from its archive", restored)
    result = load_shards(redis, extract["path"], plan.id, run_id, d.shards, stored_columns(plan, extract["path"]),
                         ttl_seconds=int(d.key_ttl_hours * 3600), max_shard_members=d.max_shard_members,
                         encoding=d.encoding)
    kept = (extract.get("counts") or {}).get("kept")
    if kept is not None and kept != result.members:
        raise RuntimeError(f"extract kept {kept} users but the staging file holds {result.members}")
    log.info("%s %s users into %s shards (%s non-empty, largest %s members, encoding %s) in %.1fs",
             "reused" if result.reused else "loaded", result.members, result.shard_count,
             len(result.non_empty), result.largest, result.encoding,
             result.scan_seconds + result.write_seconds)
    return task_units(result.non_empty, d.shards_per_task)


def step_deliver(plan: Plan, run_id: str, shard: int, redis: Any, channels: dict[str, Channel],
                 kill_switch: Any, params: dict[str, Any] | None = None,
                 results_store: ResultsStore | None = None, history_batch: Any = None,
                 log_batch: Any = None) -> dict[str, Any]:
    """Deliver one shard (see :mod:`c2b.delivery.shard`); return its stats for the report.

    ``history_batch``: a :class:`c2b.delivery.histories.HistoryBatch` the task's shards share (the
    caller flushes it); without one the shard writes its sent users to the histories at its end.

    ``kill_switch`` is a callable (true = stop), e.g. :class:`c2b.delivery.controls.kill_switch.KillSwitch`.
    ``params``: the DAG run's ``dry_run`` and ``only_touches``. The stats are cumulative over all
    attempts of the shard: ``counts`` per ``variant|touch|outcome``, ``failures`` per reason,
    ``stopped``/``stop_reason``, ``deferred`` (messages waiting for send hours) and ``next_due``.

    Raises :class:`~c2b.store.run_meta.RunStateLost` when the shard's keys are not what was loaded,
    before the first page or after the last: a wiped Redis reads like an empty shard, never "done".
    The stats carry ``loaded`` (the shard's members at load time) so the report can tell.

    After every attempt but a dry run, the shard's users and outcomes go to the delivery log of
    ``results_store`` (:mod:`c2b.results.delivery_log`), replacing the rows an earlier attempt wrote.
    """
    params = params or {}
    only = set(params["only_touches"]) if params.get("only_touches") else None
    from c2b.delivery.gc_pace import delivery_gc_pace

    with delivery_gc_pace():
        return _deliver(plan, run_id, shard, redis, channels, kill_switch, params, only, results_store,
                        history_batch, log_batch)


def _deliver(plan: Plan, run_id: str, shard: int, redis: Any, channels: dict[str, Channel], kill_switch: Any,
             params: dict[str, Any], only: set[str] | None, results_store: ResultsStore | None,
             history_batch: Any, log_batch: Any) -> dict[str, Any]:
    try:
        loaded = with_redis_retry(lambda: loaded_size(redis, plan.id, run_id, shard))
        delivery = ShardDelivery(redis, plan, run_id, shard, channels, kill_switch, RetryPolicy(),
                                 only_touches=only, dry_run=bool(params.get("dry_run")), history_batch=history_batch)
        stats = delivery.run(plan.delivery.page_size, plan.delivery.concurrency).to_xcom()
        with_redis_retry(lambda: loaded_size(redis, plan.id, run_id, shard))
        if log_batch is not None and not params.get("dry_run"):  # written with the task's other shards
            stats["logged"] = log_batch.add(redis, shard, rows=delivery.log_rows)
        elif results_store is not None and not params.get("dry_run"):
            from c2b.results.delivery_log import log_shard

            stats["logged"] = log_shard(results_store, redis, plan, run_id, shard, rows=delivery.log_rows)
            from c2b.process_memory import phase_peak

            phase_peak(f"shard {shard} delivery log")
        return {**stats, "loaded": loaded}
    finally:
        for ch in channels.values():
            ch.close()


def step_report(plan: Plan, run_id: str, extract: dict[str, Any], shards: list[int],
                shard_stats: list[dict[str, Any]], redis: Any = None, results_store: Any = None) -> dict[str, Any]:
    """Reduce the shards' stats to the run summary, with the offer budgets' use and the audit record.

    The report goes to the reports folder and, with its audit record, to the results store
    (``c2b_audit``: what ``c2b audit`` and the Results view read). A store that cannot be written
    fails the task (its retry writes the same row again): a run without its audit is not reported.
    """
    from c2b.delivery.controls.budget import budget_report

    summary = summarize(plan.id, run_id, extract, shard_stats, shards,
                        extract.get("started_at"), time.time())
    budgets = budget_report(redis, plan, run_id, summary["per_touch"])
    if budgets:
        summary["budgets"] = budgets
        for touch, b in budgets.items():
            if b["exhausted"]:
                log.warning("offer budget of touch %s was spent: %s users recorded budget_exhausted (not sent)",
                            touch, b["budget_exhausted"])
    if extract.get("audit"):
        summary["audit"] = extract["audit"]
    path = write_report(summary, reports_dir())
    log.info("run summary (%s):\n%s", path, format_table(summary))
    if results_store is not None and summary.get("audit"):
        results_store.save_audit(plan.id, run_id, summary["audit"], summary["status"], report=summary)
        log.info("audit record stored in the results store (%s)", results_store.name)
    return {**summary, "report_path": str(path)}


def step_cleanup(plan: Plan, run_id: str, redis: Any) -> int:
    """Drop the run's keys (the shard count comes from the run's meta, so ``shards: auto`` works),
    delete its staging file (personal data kept no longer than the run), and purge the plan's
    outboxes and reports older than the retention setting (``C2B_RETENTION_DAYS``)."""
    from datetime import UTC, datetime

    shards = plan.delivery.shards if isinstance(plan.delivery.shards, int) else None
    layout = with_redis_retry(lambda: read_layout(redis, plan.id, run_id)) or {}
    if layout.get("state") == "complete":  # sends of a shard whose last attempt never ended
        from c2b.delivery.contacts import record_contacts
        from c2b.delivery.histories import write_missing_histories
        from c2b.delivery.reentry import record_sends

        record = record_sends(plan, record_contacts)
        written = write_missing_histories(redis, plan, run_id, int(layout["shards"]), record, datetime.now(UTC),
                                          int(plan.delivery.key_ttl_hours * 3600))
        if written:
            log.warning("shards %s of %s / %s ended without writing their sends to the contact and re-entry "
                        "histories: written now from their ledgers", written, plan.id, run_id)
        from c2b.delivery.histories import forget_marks

        forget_marks(redis, plan, run_id, int(layout["shards"]))  # a cleared re-run must write its own
    # The ledger leaves Redis for the run's storage (a cleared run's load brings it back).
    from c2b.delivery.controls.budget import run_budget_keys

    archived = archive_ledgers(redis, plan.id, run_id, ledger_shards(redis, plan.id, run_id),
                               also=run_budget_keys(plan, run_id))
    if archived:
        log.info("ledger archived to %s: %s keys, %.1f MB; %s deleted from Redis, %s kept (written since)",
                 archived.path, archived.keys, archived.bytes / 1e6, archived.deleted, archived.kept)
    # The plan's re-entry history and the contact history leave Redis too: only extracts read them.
    from c2b.delivery import contacts, reentry

    # One after the other: side by side they took 15% less time at 1M users, and one process >1 GiB at 10M.
    for archive in (reentry.history_archive(plan.id, reentry.history_days(plan)), contacts.history_archive()):
        moved = archive.move(redis, datetime.now(UTC))
        if moved:
            log.info("%s moved to %s: %s records read from Redis, %s in the file (%s past its horizon dropped), "
                     "%.1f MB; %s buckets deleted from Redis, %s kept (written since)", archive.name, moved.path,
                     moved.moved, moved.records, moved.dropped, moved.bytes / 1e6, moved.deleted, moved.kept)
    dropped = drop_run(redis, plan.id, run_id, shards)
    staging = staging_path(plan, run_id)
    had_staging = storage.delete(staging)
    purged = purge_expired(plan.id, retention_days()) + purge_archives(plan.id)
    log.info("dropped %s run keys of %s / %s; staging file %s; %s outbox/report files past %s days purged",
             dropped, plan.id, run_id, "deleted" if had_staging else "already gone", purged, retention_days())
    return dropped
