"""Extract a plan's audience: segment SQL -> cleaned, variant-assigned staging Parquet.

Rows stream through in Arrow batches and every step works on whole batches (no per-row Python), so
memory is bounded by the batch size plus 8 bytes per distinct uid for de-duplication, and a 10M-user
segment takes seconds. Each row the segment returns ends in exactly one place, counted in
:class:`ExtractCounts`::

    rows = null_uid + malformed_uid + duplicate_uid + excluded + global_holdout + not_reentered
           + over_limit + kept

The checks run in that order: a uid that is null, then malformed, then already seen, then excluded
(by the first matching item of ``audience.exclude``, in plan order), then in the business line's
global holdout or not yet due to re-enter the plan (:mod:`c2b.audience.eligibility`), then beyond the plan's
``limit`` or the run's ``sample``. Kept users get their A/B variant in the same pass and are written
batch by batch to a staging Parquet file (``uid``, ``variant``, then the segment's other columns),
which the loader, the report and the conversion analysis all read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from c2b.audience.columns import keep_only, staged_columns
from c2b.audience.eligibility import Eligibility, GlobalHoldout
from c2b.audience.sql import check_params, read_segment
from c2b.audience.uids import KeySet, normalize_uids
from c2b.audience.warehouse import Warehouse
from c2b.hashing_arrow import murmur3_32
from c2b.plan.model import Exclusion, Plan

log = logging.getLogger(__name__)



@dataclass
class ExtractCounts:
    """What happened to every row the segment returned (each row is counted exactly once)."""

    rows: int = 0
    kept: int = 0
    null_uid: int = 0
    malformed_uid: int = 0
    duplicate_uid: int = 0
    excluded: int = 0
    global_holdout: int = 0  # in the line's universal control group (never touched by its plans)
    not_reentered: int = 0   # got this plan too recently for its re-entry rule
    over_limit: int = 0
    per_variant: dict[str, int] = field(default_factory=dict)
    excluded_by: dict[str, int] = field(default_factory=dict)

    def balanced(self) -> bool:
        """Return whether every row is accounted for."""
        return self.rows == (self.null_uid + self.malformed_uid + self.duplicate_uid + self.excluded
                             + self.global_holdout + self.not_reentered + self.over_limit + self.kept) \
            and self.kept == sum(self.per_variant.values())

    def describe(self) -> str:
        """One line for task logs: ``1,234 users kept of 1,300 rows (null uid 2, ...)``."""
        by = "".join(f", {k} {v:,}" for k, v in self.excluded_by.items() if v)
        variants = ", ".join(f"{k} {v:,}" for k, v in self.per_variant.items())
        head = f"{self.kept:,} users kept of {self.rows:,} rows" if self.kept else \
            f"0 users (audience is empty) of {self.rows:,} rows"
        return (f"{head} (null uid {self.null_uid:,}, malformed {self.malformed_uid:,}, duplicate "
                f"{self.duplicate_uid:,}, excluded {self.excluded:,}{by and ' [' + by[2:] + ']'}, "
                f"global holdout {self.global_holdout:,}, not re-entered {self.not_reentered:,}, "
                f"over limit {self.over_limit:,}); variants: {variants}")


@dataclass
class ExtractResult:
    path: str
    counts: ExtractCounts
    seconds: float = 0.0

    def to_xcom(self) -> dict:
        """Small, JSON-able summary for XCom (a path and counts, never user lists)."""
        return {"path": self.path, "counts": asdict(self.counts)}


class VariantAssigner:
    """:class:`c2b.hashing.VariantPicker` for whole Arrow arrays: the same variant for every uid.

    The bucket is ``murmur3_32(salt + ":" + uid) mod total_weight`` (unsigned); variants own
    consecutive bucket ranges in name order, so reordering the YAML reassigns no one.
    """

    def __init__(self, salt: str, weights: Mapping[str, int]) -> None:
        if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("variant weights must be non-negative with a positive sum")
        self.prefix = salt.encode("utf-8", "replace") + b":"
        self.total = sum(weights.values())
        live = [n for n in sorted(weights) if weights[n]]
        self.names = pa.array(live, pa.string())
        self.bounds = np.cumsum([weights[n] for n in live]).astype(np.uint64)

    def assign(self, uids: pa.Array) -> np.ndarray:
        """Return the index (into :attr:`names`) of every uid's variant."""
        bucket = murmur3_32(uids, 0, self.prefix).astype(np.uint64) % np.uint64(self.total)
        return np.searchsorted(self.bounds, bucket, side="right")


def _uid_chunks(warehouse: Warehouse, sql: str, params: Mapping[str, Any], batch_rows: int) -> Iterator[np.ndarray]:
    """Yield the de-duplication keys of the valid uids a query returns, batch by batch."""
    for batch in warehouse.record_batches(sql, params, batch_rows):
        if "uid" not in batch.schema.names:
            raise ValueError(f"query returns no 'uid' column (columns: {', '.join(batch.schema.names)})")
        col = normalize_uids(batch.column("uid"))
        yield col.keys(np.flatnonzero(col.valid))


def _suppression_chunks(redis: Any, name: str, chunk: int = 100_000) -> Iterator[np.ndarray]:
    members: list[str] = []
    from c2b.store import suppression

    for m in suppression.members(redis, name):  # sharded by murmur3 (c2b.store.suppression)
        members.append(m)
        if len(members) >= chunk:
            yield _keys_of_texts(members)
            members = []
    if members:
        yield _keys_of_texts(members)


def _keys_of_texts(texts: list[str]) -> np.ndarray:
    col = normalize_uids(pa.array(texts, pa.string()))
    return col.keys(np.flatnonzero(col.valid))


class _Exclusion:
    """One ``audience.exclude`` item, ready to test batches of uids against."""

    def __init__(self, item: Exclusion, warehouse: Warehouse, redis: Any, now: datetime, batch_rows: int) -> None:
        self.label = item.label
        self.keys: KeySet | None = None
        self.since: datetime | None = None
        self.redis = redis
        self.lookup: Any = None
        if item.segment is not None:
            sql = read_segment(item.segment)
            check_params(item.segment, sql, item.params)
            self.keys = KeySet.from_keys(_uid_chunks(warehouse, sql, item.params, batch_rows))
        elif item.suppression_list is not None:
            self._need_redis()
            self.keys = KeySet.from_keys(_suppression_chunks(redis, item.suppression_list))
        else:
            self._need_redis()
            self.since = now - timedelta(days=int(item.contacted_within_days or 0))
        if self.keys is not None:
            log.info("exclusion %s: %s distinct uids", self.label, f"{self.keys.size:,}")

    def _need_redis(self) -> None:
        if self.redis is None:
            raise ValueError(f"exclusion {self.label} needs Redis: pass redis= to extract_audience")

    def matches(self, texts: pa.Array, keys: np.ndarray) -> np.ndarray:
        if self.keys is not None:
            return self.keys.contains(keys)
        from c2b.delivery.history_snapshot import HistoryLookup

        assert self.since is not None
        if self.lookup is None:
            from c2b.delivery.contacts import history_archive

            self.lookup = HistoryLookup(self.redis, archive=history_archive())
        return self.lookup.matches(texts, self.since)


class _StagingWriter:
    """Parquet writer that gathers filtered batches into row groups of ~``group_rows`` rows and
    encodes them on a background thread, overlapping the next batch's query and cleaning.

    Encoding settings suit a transient file read front to back: no statistics, no dictionary for the
    (unique) uid column, LZ4. At most two row groups wait in the queue, so memory stays bounded.
    """

    def __init__(self, sink: Any, group_rows: int) -> None:
        import queue
        import threading

        self.sink = sink  # a local file name or an open binary file (c2b.storage.atomic_sink)
        self.group_rows = group_rows
        self.schema: pa.Schema | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="c2b-staging-writer", daemon=True)
        self._started = False
        self._writer: Any = None

    def _run(self) -> None:
        import pyarrow.parquet as pq

        try:
            while (table := self._queue.get()) is not None:
                if self._writer is None:
                    self._writer = pq.ParquetWriter(
                        self.sink, table.schema, compression="lz4", write_statistics=False,
                        use_dictionary=[f.name for f in table.schema if f.name != "uid"])
                self._writer.write_table(table)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc
            while self._queue.get() is not None:  # drain so the producer never blocks
                pass
        finally:
            if self._writer is not None:
                self._writer.close()

    @property
    def failed(self) -> BaseException | None:
        """What the writer thread failed with (writing the sink), if it did."""
        return self._error

    def _put(self, table: pa.Table | None) -> None:
        if not self._started:
            self._thread.start()
            self._started = True
        self._queue.put(table)
        if self._error is not None:
            raise self._error

    def write(self, batch: pa.RecordBatch) -> None:
        if self.schema is None:
            self.schema = batch.schema
        elif batch.schema != self.schema:
            try:
                batch = batch.cast(self.schema)
            except (pa.ArrowException, ValueError) as exc:
                raise ValueError(f"the segment's columns changed type mid-stream ({batch.schema} vs "
                                 f"{self.schema}); CAST them in the segment SQL") from exc
        if batch.num_rows:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            if self._pending_rows >= self.group_rows:
                self._flush()

    def _flush(self) -> None:
        assert self.schema is not None
        self._put(pa.Table.from_batches(self._pending, self.schema))
        self._pending, self._pending_rows = [], 0

    def close(self, default_schema: pa.Schema) -> None:
        """Write what is pending and finish the file (an empty audience still gets a valid file)."""
        if self.schema is None:
            self.schema = default_schema
        if self._pending or not self._started:
            self._flush()
        self._put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        if self._started and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def extract_audience(plan: Plan, warehouse: Warehouse, out_path: Any, batch_rows: int = 100_000,
                     sample: int | None = None, *, redis: Any = None, now: datetime | None = None,
                     holdout: GlobalHoldout | None = None) -> ExtractResult:
    """Run the plan's segment on ``warehouse`` and write the staging Parquet to ``out_path``.

    ``redis`` is needed for suppression-list and contacted-within-days exclusions and for the
    plan's re-entry rule (a run always passes it; without it, as in a preview, re-entry is not
    checked); ``now`` (default: the current time) anchors both. ``holdout`` is the business line's
    global holdout, if it keeps one. ``out_path`` is a local path or a URL under the run artifacts'
    storage (:mod:`c2b.storage`): the file appears only when complete (a temporary name renamed on
    ``file://``, one upload completed at the end on object storage), so a reader never sees half an
    audience, and a failure to write it is a :class:`~c2b.storage.StorageError` naming the URL.
    """
    from c2b import storage

    started = time.monotonic()
    segment = plan.audience.segment
    sql = read_segment(segment)
    check_params(segment, sql, plan.audience.params)
    now = now or datetime.now(UTC)
    exclusions = [_Exclusion(item, warehouse, redis, now, batch_rows) for item in plan.audience.exclude]
    assigner = VariantAssigner(plan.salt, plan.variant_weights)
    eligibility = Eligibility(plan, redis, now, holdout)
    cap = min(x for x in (plan.audience.limit, sample, 2**63) if x is not None)
    counts = ExtractCounts(per_variant={v: 0 for v in plan.variant_weights},
                           excluded_by={e.label: 0 for e in exclusions})
    seen = KeySet()
    keep = staged_columns(plan)
    default_schema = pa.schema([("uid", pa.string()), ("variant", pa.string())])
    with storage.atomic_sink(out_path) as sink:
        writer = _StagingWriter(sink, max(batch_rows, 1))
        try:
            for batch in warehouse.record_batches(sql, plan.audience.params, batch_rows):
                if "uid" not in batch.schema.names:
                    raise ValueError(f"segment {segment} returns no 'uid' column "
                                     f"(columns: {', '.join(batch.schema.names)})")
                out = _clean_batch(batch, counts, seen, exclusions, assigner, cap, eligibility)
                writer.write(keep_only(out, keep))  # personal data only as far as templates need it
            writer.close(default_schema)
        except BaseException as exc:
            writer.abort()
            if exc is writer.failed:  # the writer thread's error: writing to the storage
                raise storage.StorageError(f"writing {out_path} failed: {type(exc).__name__}: "
                                           f"{(str(exc).strip().splitlines() or [''])[0]}") from exc
            raise
    assert counts.balanced(), counts
    result = ExtractResult(str(out_path), counts, round(time.monotonic() - started, 3))
    log.info("audience of %s from %s: %s", plan.id, segment, counts.describe())
    if not counts.kept:
        log.info("audience of %s is empty: nothing will be delivered this run", plan.id)
    return result


def _clean_batch(batch: pa.RecordBatch, counts: ExtractCounts, seen: KeySet, exclusions: list[_Exclusion],
                 assigner: VariantAssigner, cap: int, eligibility: Eligibility | None = None) -> pa.RecordBatch:
    """Count and drop the bad, repeated, excluded and over-limit rows of one batch; add variants."""
    n = batch.num_rows
    counts.rows += n
    uid = normalize_uids(batch.column("uid"))
    counts.null_uid += int(uid.null.sum())
    counts.malformed_uid += int(uid.malformed.sum())
    valid = uid.valid
    all_valid = bool(valid.all())
    rows = np.arange(n) if all_valid else np.flatnonzero(valid)
    texts = uid.text if all_valid else uid.text.filter(pa.array(valid))
    keys = uid.keys(None if all_valid else rows)

    alive = seen.add_new(keys)
    counts.duplicate_uid += int(len(alive) - alive.sum())
    for excl in exclusions:
        idx = np.flatnonzero(alive)
        if not len(idx):
            break
        hit = excl.matches(texts.take(pa.array(idx)), keys[idx])
        if hit.any():
            counts.excluded += int(hit.sum())
            counts.excluded_by[excl.label] += int(hit.sum())
            alive[idx[hit]] = False
    if eligibility is not None:
        eligibility.apply(texts, alive, counts)

    idx = np.flatnonzero(alive)
    room = max(cap - counts.kept, 0)
    if len(idx) > room:
        counts.over_limit += len(idx) - room
        idx = idx[:room]
    counts.kept += len(idx)

    if len(idx) == n:  # everyone kept: reuse the batch's columns as they are
        kept_texts, others = texts, batch
    else:
        kept_texts = texts.take(pa.array(idx))
        others = batch.take(pa.array(rows[idx]))
    variant = assigner.assign(kept_texts)
    for i, c in enumerate(np.bincount(variant, minlength=len(assigner.names)).tolist()):
        if c:
            counts.per_variant[assigner.names[i].as_py()] += c
    columns = [kept_texts, assigner.names.take(pa.array(variant))]
    names = ["uid", "variant"]
    for name, col in zip(others.schema.names, others.columns, strict=True):
        if name not in ("uid", "variant"):
            names.append(name)
            columns.append(col)
    return pa.RecordBatch.from_arrays(columns, names=names)


__all__ = ["ExtractCounts", "ExtractResult", "VariantAssigner", "extract_audience"]
