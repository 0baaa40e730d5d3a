"""Turn one delivered shard into delivery-log rows: every user, every touch, holdout users too.

Read after a deliver attempt from what the run already keeps in Redis: the shard's users (paged by
rank, like the delivery itself) and the ledger's state of each ``(touch, uid)``: the few entries
still in the ledger hash, then every outcome record of the shard read once into a dict
(:meth:`c2b.delivery.ledger.ShardLedger.bulk_states`), not a script call per field. The variant is
recomputed from the plan's salt (the same pure function the extract used). A shard's rows are
read from Redis first (at most ``delivery.max_shard_members`` users times the touches, a shard's
bound) and then upserted in bulk (:meth:`c2b.results.store.ResultsStore.write_log`) in one
transaction, so the store is held only while writing: a DuckDB file takes one writer at a time,
and 16 parallel deliver tasks that each held it while paging through Redis waited past the
store's lock timeout (measured by bench/e2e.py at 1M users). A deliver task of several shards
keeps their rows and writes them together (:class:`DeliveryLogBatch`, up to ``LOG_BATCH_ROWS`` a
write). A retried attempt replaces its rows.

``touched_at`` is the end of the attempt that logged the row: a few seconds after the real send
for most users. Holdout users get the same time as their shard-mates who were touched in that
attempt, so both arms start their attribution window on the same clock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

from c2b.delivery.ledger import CAPPED, DEFERRED, EXPIRED, PENDING, SENT, ShardLedger
from c2b.hashing import VariantPicker
from c2b.plan.model import Plan
from c2b.results.store import HOLDOUT_TOUCH, LogRow, ResultsStore
from c2b.store import packed
from c2b.store.redis_retry import with_redis_retry
from c2b.store.shards import ShardKeys, read_page

log = logging.getLogger(__name__)

OUTCOMES = {SENT: "sent", CAPPED: "capped", EXPIRED: "expired", DEFERRED: "deferred", PENDING: "pending"}
NOT_TRIED = "unsent"  # no ledger entry: the touch was left out (only_touches) or the shard stopped first


def outcome_of(state: str | None) -> tuple[str, str | None]:
    """Return ``(outcome, reason)`` of a ledger state."""
    if state is None:
        return NOT_TRIED, None
    if state.startswith("f:"):
        return "failed", state[2:][:200] or "unknown"
    if state.startswith(CAPPED + ":"):  # which frequency cap: per_day, per_week, sms.per_week...
        return "capped", state[2:]
    return OUTCOMES.get(state, state), None


def shard_log_rows(redis: Any, plan: Plan, run_id: str, shard: int, touched_at: datetime,
                   page_size: int = 1000) -> Iterator[LogRow]:
    """Yield one row per (touch, uid) of the shard, and one ``holdout`` row per control user."""
    keys = ShardKeys(plan.id, run_id, shard)
    ledger = ShardLedger(redis, keys)
    picker = VariantPicker(plan.salt, plan.variant_weights)
    touches = {v: [t.name for t in plan.touches_of(v)] for v in plan.variant_weights}
    at = touched_at.astimezone(UTC).replace(tzinfo=None)  # the store keeps naive UTC
    cursor = 0
    while True:
        uids: list[str] = with_redis_retry(partial(read_page, redis, keys, cursor, page_size))
        if not uids:
            return
        cursor += len(uids)
        wanted: list[tuple[str, str, str]] = []
        for uid, variant in zip(uids, picker.pick_page(uids), strict=True):
            if not touches[variant]:
                yield (plan.id, run_id, variant, HOLDOUT_TOUCH, uid, "holdout", None, at)
                continue
            wanted.extend((variant, t, uid) for t in touches[variant])
        # Every record of the shard is read once (not a script per field): see bulk_states.
        states: list[str | None] = with_redis_retry(
            partial(ledger.bulk_states, [f"{t}|{u}" for _, t, u in wanted]))
        for (variant, touch, uid), state in zip(wanted, states, strict=True):
            outcome, reason = outcome_of(state)
            yield (plan.id, run_id, variant, touch, uid, outcome, reason, at)


def shard_log_table(redis: Any, plan: Plan, run_id: str, shard: int,
                    touched_at: datetime) -> tuple[Any, list[str]] | None:
    """Return the rows :func:`shard_log_rows` yields as an Arrow table of the log's columns (in
    another order), and the uids of its ``sent`` rows (each once); read in bulk. ``None`` when the
    shard is not in the shape this reads: then :func:`shard_log_rows` reads it.

    The shape of a shard whose delivery ended in its main pass, the usual one: packed integer
    uids, and every state in this load's page records
    (:meth:`c2b.delivery.ledger.ShardLedger.main_pass_records`: no entry in the hash, no bucket,
    no other load's pages, no deferred code). A packed uid is its own record key, so the shard's
    members (one GET) are matched with its records (one GET a page) by sorting, with no Python
    object a row: at 10M users the row-by-row read took about a fifth of the deliver tasks' time.
    """
    import numpy as np
    import pyarrow as pa

    keys = ShardKeys(plan.id, run_id, shard)
    found = with_redis_retry(ShardLedger(redis, keys).main_pass_records)
    if found is None:
        return None
    slots, names, width, records = found
    raw = with_redis_retry(lambda: redis.get(keys.packed))
    if not raw:
        return None  # a ZSET shard (or none at all: shard_log_rows reads what there is)
    uids = np.frombuffer(raw, dtype=packed.DTYPE, count=len(raw) // packed.WIDTH)
    rec = np.frombuffer(records, dtype=np.uint8).reshape(-1, 8 + width)
    rkeys = rec[:, :8].copy().view(packed.DTYPE).ravel()
    order = np.argsort(rkeys, kind="stable")
    ordered = rkeys[order]
    if len(ordered) and (ordered[1:] == ordered[:-1]).any():
        return None  # a uid with two records: the row-by-row reader decides between them
    if len(ordered):
        at = np.minimum(np.searchsorted(ordered, uids), len(ordered) - 1)
        hit = ordered[at] == uids
        row = order[at]
    else:
        hit = np.zeros(len(uids), dtype=bool)
        row = np.zeros(len(uids), dtype=np.int64)
    deferred = [c for c, st in names.items() if st == DEFERRED]
    if deferred and np.isin(rec[:, 8:], deferred).any():
        return None  # a deferred entry lives by field: the row-by-row reader follows it
    # Per code (0: no record, or no code for the touch): the outcome and reason of its state.
    outcome_of_code = np.empty(256, dtype=object)
    reason_of_code = np.empty(256, dtype=object)
    for c in range(256):
        outcome_of_code[c], reason_of_code[c] = outcome_of(names.get(c) if c else None)
    text = pa.array(uids).cast(pa.string())
    picker = VariantPicker(plan.salt, plan.variant_weights)
    variants = plan.variant_weights
    picked = None if len(variants) == 1 else np.array(picker.pick_page(text.to_pylist()), dtype=object)
    at_ = touched_at.astimezone(UTC).replace(tzinfo=None)
    parts = []
    sent_rows = []

    def same(value: str, n: int) -> Any:
        # A column of one value: dictionary-encoded, a byte a row (not the string n times), as a
        # deliver task keeps its shards' rows until it writes them together (DeliveryLogBatch).
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value], pa.string()))

    def part(who: Any, variant: str, touch: str, outcome: Any, reason: Any) -> Any:
        n = len(who)
        return pa.table({"plan_id": same(plan.id, n), "run_id": same(run_id, n), "variant": same(variant, n),
                         "touch": same(touch, n), "uid": who,
                         "outcome": pa.array(outcome, pa.string()), "reason": pa.array(reason, pa.string()),
                         "touched_at": pa.array(np.full(n, np.datetime64(at_, "us")), pa.timestamp("us"))})

    for variant in variants:
        mask = np.ones(len(uids), dtype=bool) if picked is None else picked == variant
        who = text if picked is None else text.filter(pa.array(mask))
        touches = [t.name for t in plan.touches_of(variant)]
        if not touches:
            parts.append(part(who, variant, HOLDOUT_TOUCH, ["holdout"] * len(who), [None] * len(who)))
            continue
        mine_hit, mine_row = hit[mask], row[mask]
        for touch in touches:
            slot = slots.get(touch)
            code = (np.where(mine_hit, rec[mine_row, 8 + slot], 0) if slot is not None and slot < width
                    else np.zeros(len(mine_row), dtype=np.uint8))
            outcome = outcome_of_code[code]
            parts.append(part(who, variant, touch, outcome, reason_of_code[code]))
            sent_rows.append(uids[mask][outcome == "sent"])
    table = pa.concat_tables(parts)
    sent = np.unique(np.concatenate(sent_rows)) if sent_rows else np.array([], dtype=np.int64)
    return table, pa.array(sent).cast(pa.string()).to_pylist()


def _run_row(plan: Plan, run_id: str, now: datetime) -> dict[str, Any]:
    """The run's row of ``c2b_runs`` (:meth:`c2b.results.store.ResultsStore.register_run`'s arguments)."""
    from c2b.results.attribution import goal_info

    controls = [n for n, v in plan.experiment.variants.items() if v.control] if plan.experiment else []
    return {"plan_id": plan.id, "run_id": run_id, "weights": plan.variant_weights, "controls": controls,
            "logged_at": now.astimezone(UTC).replace(tzinfo=None), "goal": goal_info(plan.goal)}


def log_shard(store: ResultsStore, redis: Any, plan: Plan, run_id: str, shard: int,
              now: datetime | None = None, rows: Any = None) -> int:
    """Register the run and upsert the shard's rows into the results store; return the rows.

    ``rows``: the shard's rows already read, a list or an Arrow table
    (:func:`c2b.delivery.histories.write_shard_histories` reads them at the end of the attempt);
    read from Redis when not given.
    """
    now = now or datetime.now(UTC)
    run = _run_row(plan, run_id, now)
    if rows is None:  # read before taking the store's write lock
        bulk = shard_log_table(redis, plan, run_id, shard, now)
        rows = bulk[0] if bulk is not None else list(shard_log_rows(redis, plan, run_id, shard, now))
    n = store.write_log(rows, run=run, part=(plan.id, run_id, f"shard {shard}"))
    log.info("delivery log: %s rows of shard %s written to %s", n, shard, store.name)
    return n


# A deliver task writes its shards' rows once it holds this many. Measured in one process
# (bench-like: the 128 shards of 76k rows of a 10M run, 2026-11-28 21:50Z): 30.2 s of CPU and a
# 244 MiB peak written shard by shard; in writes of 500k rows 8.8 s / 309 MiB, of 1M 8.6 s / 398
# MiB (with DISTINCT ON, which keys_unique spares them: 15.3 s / 363, 10.4 s / 522).
LOG_BATCH_ROWS = 500_000


class DeliveryLogBatch:
    """The delivery-log rows of a deliver task's shards, written together.

    A shard's rows are read when its attempt ends (while its keys are there) and kept; they reach
    the store in one transaction once ``rows_per_write`` are held, and when the task ends
    (:meth:`flush`, called however it ends). Why: written shard by shard, each of a 10M-user run's
    128 shards paid DuckDB's write-ahead log and a checkpoint (~0.2 s of CPU each); written
    together, one insert (see :meth:`c2b.results.store.ResultsStore.write_logs`). Nothing is lost
    when a task dies before its write: its retry passes over every shard of the task again and
    logs them all (a retried attempt replaces its rows).
    """

    def __init__(self, store: ResultsStore, plan: Plan, run_id: str, rows_per_write: int = LOG_BATCH_ROWS) -> None:
        self.store, self.plan, self.run_id, self.rows_per_write = store, plan, run_id, rows_per_write
        self._parts: list[tuple[tuple[str, str, str], Any]] = []
        self._held = 0

    def add(self, redis: Any, shard: int, rows: Any = None, now: datetime | None = None) -> int:
        """Take a shard's rows (read from Redis when not given, as :func:`log_shard` does); return
        how many. Writes what is held once it reaches ``rows_per_write``."""
        if rows is None:
            bulk = shard_log_table(redis, self.plan, self.run_id, shard, now or datetime.now(UTC))
            rows = bulk[0] if bulk is not None else list(shard_log_rows(redis, self.plan, self.run_id, shard,
                                                                         now or datetime.now(UTC)))
        n = rows.num_rows if hasattr(rows, "num_rows") else len(rows)
        self._parts.append(((self.plan.id, self.run_id, f"shard {shard}"), rows))
        self._held += n
        if self._held >= self.rows_per_write:
            self.flush()
        return int(n)

    def flush(self, now: datetime | None = None) -> int:
        """Write the rows held (one transaction); return how many."""
        if not self._parts:
            return 0
        parts, self._parts, self._held = self._parts, [], 0
        n = self.store.write_logs(parts, run=_run_row(self.plan, self.run_id, now or datetime.now(UTC)),
                                  unique=keys_unique([rows for _, rows in parts]))
        log.info("delivery log: %s rows of %s written to %s", n, ", ".join(p[2] for p, _ in parts), self.store.name)
        return n


def keys_unique(tables: list[Any]) -> bool:
    """Whether no ``(plan, run, touch, uid)`` repeats among the rows of ``tables`` (Arrow tables of
    the log's columns with integer uids; anything else: ``False``). The bulk reader's rows never
    repeat one (a shard's packed uids are distinct, shards of a run disjoint), but an insert that
    trusted that unchecked would double rows on the day it did not hold; this costs a sort of the
    uids (~0.1 s a million rows) where the store's ``DISTINCT ON`` cost ~0.5 s and ~230 MiB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not tables or not all(hasattr(t, "num_rows") for t in tables):
        return False
    whole = pa.concat_tables([t.select(["plan_id", "run_id", "touch", "uid"]) for t in tables])
    if whole.num_rows == 0:
        return True
    for name in ("plan_id", "run_id"):
        if len(pc.unique(whole.column(name).cast(pa.string()))) != 1:
            return False
    try:
        uid = pc.cast(whole.column("uid"), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False  # text uids: the store's DISTINCT ON
    touch = whole.column("touch").cast(pa.string())
    touch_index = pc.index_in(touch, value_set=pc.unique(touch)).to_numpy()
    order = np.lexsort((touch_index, uid))
    uid, touch_index = uid[order], touch_index[order]
    return not bool(((uid[1:] == uid[:-1]) & (touch_index[1:] == touch_index[:-1])).any())
