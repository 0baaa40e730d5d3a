"""Extract a plan's audience: segment SQL -> cleaned, variant-assigned staging Parquet.

Rows stream through in Arrow batches, so memory is bounded by the batch size plus the set of uids
already seen (for de-duplication). Bad rows are never silently dropped: each kind is counted and
the counts travel in the run summary.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from c2b.hashing import VariantPicker
from c2b.plan import Plan
from c2b.sql import segment_path
from c2b.warehouse import Warehouse

log = logging.getLogger(__name__)

MAX_UID_BYTES = 128


@dataclass
class ExtractCounts:
    """What happened to every row the segment returned."""

    rows: int = 0
    kept: int = 0
    null_uid: int = 0
    malformed_uid: int = 0
    duplicate_uid: int = 0
    over_limit: int = 0
    per_variant: dict[str, int] = field(default_factory=dict)


@dataclass
class ExtractResult:
    path: str
    counts: ExtractCounts

    def to_xcom(self) -> dict:
        """Small, JSON-able summary for XCom (a path and counts, never user lists)."""
        return {"path": self.path, "counts": asdict(self.counts)}


def clean_uid(value: object) -> str | None:
    """Return the uid as text, or None when it is malformed.

    Malformed: empty or blank, longer than 128 UTF-8 bytes, containing whitespace or control
    characters, or not encodable as UTF-8 (a lone surrogate).
    """
    if isinstance(value, float):
        if value != value or not value.is_integer():
            return None
        value = int(value)
    text = str(value)
    if not text or any(c.isspace() or ord(c) < 32 for c in text):
        return None
    try:
        if len(text.encode("utf-8")) > MAX_UID_BYTES:
            return None
    except UnicodeEncodeError:
        return None
    return text


def extract_audience(plan: Plan, warehouse: Warehouse, out_path: str | Path,
                     batch_rows: int = 100_000, sample: int | None = None) -> ExtractResult:
    """Run the plan's segment on ``warehouse`` and write the staging Parquet to ``out_path``.

    The staging file has columns ``uid`` (string), ``variant`` (string) and every other segment
    column unchanged (they become template attributes).
    """
    sql = segment_path(plan.audience.segment).read_text(encoding="utf-8")
    picker = VariantPicker(plan.salt, plan.variant_weights)
    cap = min(x for x in (plan.audience.limit, sample, 2**63) if x is not None)
    counts = ExtractCounts(per_variant={v: 0 for v in plan.variant_weights})
    seen: set[str] = set()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".parquet.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for batch in warehouse.record_batches(sql, plan.audience.params, batch_rows):
            if "uid" not in batch.schema.names:
                raise ValueError(f"segment {plan.audience.segment} returns no 'uid' column "
                                 f"(columns: {', '.join(batch.schema.names)})")
            counts.rows += batch.num_rows
            keep_rows, uids = [], []
            for i, raw in enumerate(batch.column("uid").to_pylist()):
                if raw is None:
                    counts.null_uid += 1
                    continue
                uid = clean_uid(raw)
                if uid is None:
                    counts.malformed_uid += 1
                    continue
                if uid in seen:
                    counts.duplicate_uid += 1
                    continue
                if counts.kept >= cap:
                    counts.over_limit += 1
                    continue
                seen.add(uid)
                counts.kept += 1
                keep_rows.append(i)
                uids.append(uid)
            if not keep_rows:
                continue
            variants = picker.pick_many(u.encode("utf-8") for u in uids)
            for v in variants:
                counts.per_variant[v] += 1
            kept = batch.take(pa.array(keep_rows, type=pa.int64()))
            table = pa.Table.from_batches([kept]).drop_columns(["uid"])
            table = table.add_column(0, "uid", pa.array(uids, type=pa.string()))
            table = table.add_column(1, "variant", pa.array(variants, type=pa.string()))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:  # empty audience: still write a valid, empty file
            pq.write_table(pa.table({"uid": pa.array([], pa.string()), "variant": pa.array([], pa.string())}), tmp)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(out_path)
    log.info("extracted %s: %s", plan.id, counts)
    return ExtractResult(str(out_path), counts)
