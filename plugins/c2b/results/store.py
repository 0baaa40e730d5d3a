"""The results store: the delivery log of every run and the attribution results, in SQL.

Why SQL behind a connection (``c2b_results``, see :func:`c2b.airflow.resources.get_results_store`)
and not files: the deliver tasks (any worker), the attribution DAG and the api-server's Results
view all read and write the same rows. PostgreSQL (any DB-API driver whose SQL has ``ON CONFLICT``)
where a SQL connection is configured; a DuckDB file by default (``make demo``).

Tables (created on first use; the same DDL on both, but for the delivery log's key on DuckDB, below)::

    c2b_delivery_log   one row per (plan, run, touch, uid): variant, outcome, reason, touched_at.
                       Holdout users have touch '-' and outcome 'holdout'. The key makes a retried
                       deliver task replace its rows, never add to them; touched_at is when the row
                       first had its current outcome (a retry that finds the same outcome keeps it).
    c2b_runs           one row per logged run: when it was first logged, the plan's variant
                       weights (the SRM check's expectation) and which variants are controls.
    c2b_results        one row per (plan, run, metric): the latest attribution (JSON), with the
                       clock it was computed at; an older clock never replaces a newer one.
    c2b_audit          one row per reported run (dry runs too): its audit record (plan hash, git
                       commit, segment hashes, trigger and user, params, code version, line; see
                       :mod:`c2b.results.audit`), the report's status and the report itself
                       (JSON), written by the run's ``report`` task; a re-run report replaces it.

**The delivery log on DuckDB has no primary key.** Its rows of a shard are hash-spread uids, so
each shard's upsert walked (and loaded) the key's ART index all over, and its commit wrote the
index back: in the 10M-user run the deliver tasks' memory rose with the log's size, to ~1 GB in the
log write, and each write held the file's single write lock for seconds while 16 tasks queued for
it. On DuckDB a write instead deletes the rows with the batch's keys and appends the batch (the
earlier ``touched_at`` kept where the outcome is the same), in one transaction: the same rows as the
upsert, without an index. That look for earlier rows scans the run's rows, so a shard's first
write, which has none (``c2b_log_parts`` records each shard logged, with its row count), only
appends; a retried shard's write replaces. A file written by an earlier version (with the key) is
moved to the new table once, by the first write.

Delivery-log writes are bulk: each chunk of :data:`BULK_ROWS` rows reaches the database as one
table (DuckDB: an Arrow table scanned by one ``INSERT ... SELECT``; PostgreSQL: ``COPY`` into a
temporary table, then one ``INSERT ... SELECT``), upserted with the same ``ON CONFLICT`` rule, in
the caller's one transaction. Another DB-API driver gets multi-row ``VALUES`` of
:data:`BATCH_ROWS`. Nothing passes through XCom.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)

BATCH_ROWS = 1000  # rows of one multi-row VALUES (the fallback without a bulk path)
BULK_ROWS = 100_000  # rows of one bulk upsert (an Arrow table or one COPY)
LOG_COLUMNS = ("plan_id", "run_id", "variant", "touch", "uid", "outcome", "reason", "touched_at")
HOLDOUT_TOUCH = "-"
LogRow = tuple[str, str, str, str, str, str, str | None, datetime]

DDL = (
    """CREATE TABLE IF NOT EXISTS c2b_delivery_log (
        plan_id VARCHAR(64) NOT NULL, run_id VARCHAR(250) NOT NULL, variant VARCHAR(64) NOT NULL,
        touch VARCHAR(64) NOT NULL, uid VARCHAR(128) NOT NULL, outcome VARCHAR(16) NOT NULL,
        reason VARCHAR(200), touched_at TIMESTAMP NOT NULL,
        PRIMARY KEY (plan_id, run_id, touch, uid))""",
    """CREATE TABLE IF NOT EXISTS c2b_runs (
        plan_id VARCHAR(64) NOT NULL, run_id VARCHAR(250) NOT NULL, logged_at TIMESTAMP NOT NULL,
        weights TEXT NOT NULL, controls TEXT NOT NULL, goal TEXT,
        PRIMARY KEY (plan_id, run_id))""",
    """CREATE TABLE IF NOT EXISTS c2b_results (
        plan_id VARCHAR(64) NOT NULL, run_id VARCHAR(250) NOT NULL, metric VARCHAR(64) NOT NULL,
        as_of TIMESTAMP NOT NULL, computed_at TIMESTAMP NOT NULL, payload TEXT NOT NULL,
        PRIMARY KEY (plan_id, run_id, metric))""",
    """CREATE TABLE IF NOT EXISTS c2b_audit (
        plan_id VARCHAR(64) NOT NULL, run_id VARCHAR(250) NOT NULL, recorded_at TIMESTAMP,
        reported_at TIMESTAMP NOT NULL, status VARCHAR(16), plan_file TEXT, plan_sha256 VARCHAR(64),
        git_commit VARCHAR(64), git_dirty BOOLEAN, run_trigger VARCHAR(32), triggered_by VARCHAR(250),
        line VARCHAR(64), segments TEXT NOT NULL, params TEXT NOT NULL, code TEXT NOT NULL, report TEXT,
        PRIMARY KEY (plan_id, run_id))""",
)

AUDIT_COLUMNS = ("plan_id", "run_id", "recorded_at", "reported_at", "status", "plan_file", "plan_sha256",
                 "git_commit", "git_dirty", "run_trigger", "triggered_by", "line", "segments", "params", "code",
                 "report")
# The audit record's keys whose column has another name (``trigger`` is an SQL keyword).
_AUDIT_KEY = {"run_trigger": "trigger"}

_UPSERT_LOG = (
    "INSERT INTO c2b_delivery_log (plan_id, run_id, variant, touch, uid, outcome, reason, touched_at) "
    "{values} ON CONFLICT (plan_id, run_id, touch, uid) DO UPDATE SET "
    "variant = excluded.variant, reason = excluded.reason, outcome = excluded.outcome, "
    "touched_at = CASE WHEN c2b_delivery_log.outcome = excluded.outcome "
    "THEN c2b_delivery_log.touched_at ELSE excluded.touched_at END "
    # A row a retry finds unchanged is left alone (the update would write the same values): a
    # retried attempt costs the key checks, not a rewrite of every row.
    "WHERE c2b_delivery_log.outcome IS DISTINCT FROM excluded.outcome "
    "OR c2b_delivery_log.variant IS DISTINCT FROM excluded.variant "
    "OR c2b_delivery_log.reason IS DISTINCT FROM excluded.reason"
)


def _batches(rows: Iterable[LogRow] | Any, size: int) -> Iterator[list[LogRow] | Any]:
    """Chunks of ``size`` rows: lists of rows, or slices of an Arrow table of :data:`LOG_COLUMNS`."""
    if hasattr(rows, "num_rows"):  # an Arrow table (c2b.results.delivery_log.shard_log_table)
        table: Any = rows
        yield from (table.slice(i, size) for i in range(0, table.num_rows, size))
        return
    if isinstance(rows, list):
        yield from (rows[i:i + size] for i in range(0, len(rows), size))
        return
    batch: list[LogRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class ResultsStore:
    """The store's operations, in SQL both backends accept; subclasses give connections and binding."""

    name = "results store"

    # --- backend hooks ---------------------------------------------------------------------------
    def _connect(self, write: bool) -> Any:
        raise NotImplementedError

    def _cursor(self, conn: Any) -> Any:
        return conn.cursor()

    def _execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> None:
        """Run ``sql`` whose placeholders are ``?`` with positional ``params``."""
        raise NotImplementedError

    bulk_rows = BULK_ROWS  # rows handed to one _insert_log_batch call

    def _ensure_tables(self, cur: Any) -> None:
        for ddl in DDL:
            self._execute(cur, ddl)

    def _insert_log_batch(self, cur: Any, batch: list[LogRow], fresh: bool = False, unique: bool = False) -> None:
        batch = _as_rows(batch)
        for i in range(0, len(batch), BATCH_ROWS):
            part = batch[i:i + BATCH_ROWS]
            placeholders = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(part))
            self._execute(cur, _UPSERT_LOG.format(values="VALUES " + placeholders), [v for row in part for v in row])

    # --- shared ----------------------------------------------------------------------------------
    def _transaction(self, work: Callable[[Any], Any]) -> Any:
        conn = self._connect(write=True)
        try:
            cur = self._cursor(conn)
            try:
                self._ensure_tables(cur)
                out = work(cur)
            finally:
                cur.close()
            conn.commit()
            return out
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001 - the original error matters
                pass
            raise
        finally:
            conn.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._connect(write=False)
        try:
            cur = self._cursor(conn)
            try:
                self._execute(cur, sql, params)
                return [tuple(r) for r in cur.fetchall()]
            finally:
                cur.close()
        except Exception as exc:
            if _missing_table(exc):
                return []
            raise
        finally:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001
                pass
            conn.close()

    def ensure_schema(self) -> None:
        """Create the tables if they are missing."""
        self._transaction(lambda cur: None)

    def register_run(self, plan_id: str, run_id: str, weights: dict[str, int], controls: Sequence[str],
                     logged_at: datetime, goal: dict[str, Any] | None = None) -> None:
        """Record a run: its weights, controls and goal (idempotent: the first time is kept)."""
        self._transaction(lambda cur: self._register(cur, plan_id, run_id, weights, controls, logged_at, goal))

    def _register(self, cur: Any, plan_id: str, run_id: str, weights: dict[str, int], controls: Sequence[str],
                  logged_at: datetime, goal: dict[str, Any] | None) -> None:
        self._execute(cur, "INSERT INTO c2b_runs (plan_id, run_id, logged_at, weights, controls, goal) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (plan_id, run_id) DO UPDATE SET "
                           "weights = excluded.weights, controls = excluded.controls, goal = excluded.goal",
                      (plan_id, run_id, logged_at, json.dumps(weights), json.dumps(list(controls)),
                       json.dumps(goal) if goal is not None else None))

    def write_log(self, rows: Iterable[LogRow], batch_rows: int | None = None,
                  run: dict[str, Any] | None = None, part: tuple[str, str, str] | None = None) -> int:
        """Upsert delivery-log rows in bulk chunks, in one transaction; return how many were written.

        ``rows``: tuples of :data:`LOG_COLUMNS`, or an Arrow table with those columns.

        A row whose ``(plan, run, touch, uid)`` is logged already replaces it (a retried attempt),
        keeping its ``touched_at`` when the outcome is the same. Chunks are ``batch_rows`` rows
        (default: the backend's bulk size). ``run`` (the arguments of :meth:`register_run`)
        registers the run in the same transaction. ``part`` (plan, run, name: a shard) says the rows
        are all of that part's, so that a backend which keeps parts (DuckDB) can append a part it
        has not logged yet instead of looking for every row's earlier version.
        """
        batch_rows = batch_rows or self.bulk_rows

        def work(cur: Any) -> int:
            if run is not None:
                self._register(cur, **run)
            return self._write_part(cur, rows, part, batch_rows)
        return int(self._transaction(work))

    def write_logs(self, parts: Sequence[tuple[tuple[str, str, str], Any]], run: dict[str, Any] | None = None,
                   unique: bool = False) -> int:
        """Write several parts' rows (``(part, rows)`` as :meth:`write_log` takes them) in one
        transaction; return how many rows were written.

        Why: on DuckDB each write of a shard's ~76k rows went through the write-ahead log and a
        checkpoint when the connection closed, ~0.2 s of CPU a shard (27 s for the 128 shards of a
        10M-user run, measured); parts that are all new and all Arrow tables go in as one insert,
        whose full row groups DuckDB writes straight to the file (9-11 s for the same rows in
        writes of 16 shards, ~14 in writes of 8). ``unique``: the caller checked that no key
        ``(plan, run, touch, uid)`` repeats among the rows, so that insert needs no ``DISTINCT ON``
        (on DuckDB at 1M rows ~0.5 s of CPU and ~230 MiB).
        """
        def work(cur: Any) -> int:
            if run is not None:
                self._register(cur, **run)
            tables = len(parts) > 1 and all(hasattr(rows, "num_rows") for _, rows in parts)
            if tables and all(self._part_is_new(cur, part) for part, _ in parts):
                import pyarrow as pa

                whole = pa.concat_tables([rows.select(list(LOG_COLUMNS)) for _, rows in parts])
                self._insert_log_batch(cur, whole, True, unique=unique)
                for part, rows in parts:
                    self._record_part(cur, part, rows.num_rows)
                return int(whole.num_rows)
            return sum(self._write_part(cur, rows, part, self.bulk_rows) for part, rows in parts)
        return int(self._transaction(work)) if parts else 0

    def _write_part(self, cur: Any, rows: Any, part: tuple[str, str, str] | None, batch_rows: int) -> int:
        fresh = part is not None and self._part_is_new(cur, part)
        n = 0
        for batch in _batches(rows, batch_rows):
            self._insert_log_batch(cur, batch, fresh)
            n += len(batch)
        if part is not None:
            self._record_part(cur, part, n)
        return n

    def _part_is_new(self, cur: Any, part: tuple[str, str, str]) -> bool:
        return False

    def _record_part(self, cur: Any, part: tuple[str, str, str], rows: int) -> None:
        pass

    def runs(self, plan_id: str) -> list[tuple[str, datetime]]:
        """Return the plan's logged runs as ``(run_id, logged_at)``, oldest first."""
        rows = self._query("SELECT run_id, logged_at FROM c2b_runs WHERE plan_id = ? ORDER BY logged_at, run_id",
                           (plan_id,))
        return [(str(r[0]), r[1]) for r in rows]

    def run_info(self, plan_id: str, run_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT logged_at, weights, controls, goal FROM c2b_runs WHERE plan_id = ? AND run_id = ?",
                           (plan_id, run_id))
        if not rows:
            return None
        logged_at, weights, controls, goal = rows[0]
        return {"logged_at": logged_at, "weights": json.loads(weights), "controls": json.loads(controls),
                "goal": json.loads(goal) if goal else None}

    def variant_counts(self, plan_id: str, run_id: str) -> dict[str, tuple[int, int]]:
        """Return ``{variant: (users assigned, users reached)}`` of the run (reached: a touch sent, or held out)."""
        rows = self._query(
            "SELECT variant, COUNT(*), SUM(reached) FROM (SELECT uid, MIN(variant) AS variant, "
            "MAX(CASE WHEN outcome IN ('sent', 'holdout') THEN 1 ELSE 0 END) AS reached FROM c2b_delivery_log "
            "WHERE plan_id = ? AND run_id = ? GROUP BY uid) per_user GROUP BY variant", (plan_id, run_id))
        return {str(v): (int(n), int(r or 0)) for v, n, r in rows}

    def log_users(self, plan_id: str, run_id: str) -> list[tuple[str, str, datetime, int]]:
        """Return ``(uid, variant, touched_at, reached)`` per user of the run: the earliest touch
        time of the user's rows, and 1 when any of their touches was sent (or they are held out)."""
        return [(str(u), str(v), t, int(r)) for u, v, t, r in self._query(
            "SELECT uid, MIN(variant), MIN(touched_at), "
            "MAX(CASE WHEN outcome IN ('sent', 'holdout') THEN 1 ELSE 0 END) "
            "FROM c2b_delivery_log WHERE plan_id = ? AND run_id = ? GROUP BY uid ORDER BY uid",
            (plan_id, run_id))]

    def sent_touches(self, plan_id: str, run_id: str) -> list[tuple[str, str]]:
        """Return ``(uid, touch)`` of every message of the run that was sent."""
        return [(str(u), str(t)) for u, t in self._query(
            "SELECT uid, touch FROM c2b_delivery_log WHERE plan_id = ? AND run_id = ? AND outcome = 'sent'",
            (plan_id, run_id))]

    def touch_outcomes(self, plan_id: str, run_id: str) -> list[dict[str, Any]]:
        """Return messages per (touch, variant, outcome, reason) of the run."""
        rows = self._query(
            "SELECT touch, variant, outcome, reason, COUNT(*) FROM c2b_delivery_log "
            "WHERE plan_id = ? AND run_id = ? GROUP BY touch, variant, outcome, reason "
            "ORDER BY variant, touch, outcome, reason", (plan_id, run_id))
        return [{"touch": t, "variant": v, "outcome": o, "reason": r, "count": int(n)} for t, v, o, r, n in rows]

    def log_count(self, plan_id: str, run_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM c2b_delivery_log WHERE plan_id = ? AND run_id = ?",
                           (plan_id, run_id))
        return int(rows[0][0]) if rows else 0

    def save_result(self, plan_id: str, run_id: str, metric: str, as_of: datetime, payload: dict[str, Any],
                    computed_at: datetime) -> bool:
        """Store one metric's attribution; return False (and keep the stored one) when it is newer."""
        def work(cur: Any) -> bool:
            self._execute(cur, "SELECT as_of FROM c2b_results WHERE plan_id = ? AND run_id = ? AND metric = ?",
                          (plan_id, run_id, metric))
            found = cur.fetchall()
            if found and found[0][0] > as_of:
                return False
            self._execute(cur, "DELETE FROM c2b_results WHERE plan_id = ? AND run_id = ? AND metric = ?",
                          (plan_id, run_id, metric))
            self._execute(cur, "INSERT INTO c2b_results (plan_id, run_id, metric, as_of, computed_at, payload) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                          (plan_id, run_id, metric, as_of, computed_at, json.dumps(payload, sort_keys=True)))
            return True
        return bool(self._transaction(work))

    def save_audit(self, plan_id: str, run_id: str, audit: dict[str, Any], status: str | None,
                   report: dict[str, Any] | None = None, reported_at: datetime | None = None) -> None:
        """Store a run's audit record with its report (the latest report of the run replaces the row)."""
        from c2b.results.audit import audit_row

        row = audit_row(run_id, audit)
        values = {**{c: row.get(_AUDIT_KEY.get(c, c)) for c in AUDIT_COLUMNS}, "plan_id": plan_id, "run_id": run_id,
                  "recorded_at": _naive_utc(audit.get("recorded_at")), "status": status,
                  "reported_at": _naive_utc(reported_at) or _naive_utc(datetime.now(UTC)),
                  "report": json.dumps(report, sort_keys=True, default=str) if report is not None else None}
        values["git_dirty"] = None if values["git_dirty"] is None else bool(values["git_dirty"])
        placeholders = ", ".join("?" * len(AUDIT_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in AUDIT_COLUMNS[2:])
        self._transaction(lambda cur: self._execute(
            cur, f"INSERT INTO c2b_audit ({', '.join(AUDIT_COLUMNS)}) VALUES ({placeholders}) "
                 f"ON CONFLICT (plan_id, run_id) DO UPDATE SET {updates}", [values[c] for c in AUDIT_COLUMNS]))

    def audits(self, plan_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
        """Return the plan's audit records (``run`` and ``status`` added), oldest first; one run's with ``run_id``."""
        where = "plan_id = ?" + (" AND run_id = ?" if run_id is not None else "")
        rows = self._query(f"SELECT {', '.join(AUDIT_COLUMNS[:-1])} FROM c2b_audit WHERE {where} "
                           "ORDER BY recorded_at, reported_at, run_id",
                           (plan_id, run_id) if run_id is not None else (plan_id,))
        return [_audit_record(dict(zip(AUDIT_COLUMNS[:-1], r, strict=True))) for r in rows]

    def audit(self, plan_id: str, run_id: str) -> dict[str, Any] | None:
        """Return one run's audit record, or None when its report stored none."""
        found = self.audits(plan_id, run_id)
        return found[0] if found else None

    def stored_report(self, plan_id: str, run_id: str) -> dict[str, Any] | None:
        """Return the run report stored with the audit record, or None."""
        rows = self._query("SELECT report FROM c2b_audit WHERE plan_id = ? AND run_id = ?", (plan_id, run_id))
        return json.loads(rows[0][0]) if rows and rows[0][0] else None

    def result(self, plan_id: str, run_id: str, metric: str) -> dict[str, Any] | None:
        rows = self._query("SELECT payload FROM c2b_results WHERE plan_id = ? AND run_id = ? AND metric = ?",
                           (plan_id, run_id, metric))
        return json.loads(rows[0][0]) if rows else None


def _naive_utc(value: Any) -> datetime | None:
    """Return a time (datetime or ISO text) as a naive UTC datetime, what a TIMESTAMP column keeps."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when


def _audit_record(row: dict[str, Any]) -> dict[str, Any]:
    """Return a stored audit row as the audit record (:func:`c2b.results.audit.audit_record`)."""
    out = {_AUDIT_KEY.get(k, k): v for k, v in row.items() if k not in ("plan_id", "run_id")}
    for key in ("segments", "params", "code"):
        out[key] = json.loads(out[key]) if out[key] else {}
    for key in ("recorded_at", "reported_at"):
        if isinstance(out[key], datetime):
            out[key] = out[key].replace(tzinfo=UTC).isoformat(timespec="seconds")
    out["git_dirty"] = None if out["git_dirty"] is None else bool(out["git_dirty"])
    return {"plan": row["plan_id"], "run": row["run_id"], **out}


def _missing_table(exc: Exception) -> bool:
    text = str(exc).lower()
    return "c2b_" in text and ("does not exist" in text or "not found" in text or "no such table" in text)


class DuckDBResultsStore(ResultsStore):
    """A DuckDB file. One process may write at a time: a writer or reader that finds the file
    locked by another process (parallel deliver tasks) waits and tries again, for up to
    ``lock_timeout`` seconds.

    The wait is long (10 minutes) because the writers queue: at 10M users, 16 deliver tasks on a
    busy 2-core machine each held the lock 2-7 s per shard write, so a writer waited up to 138 s,
    and a 120 s limit failed 20 of the run's deliver tasks with "Could not set lock on file" (each
    retry redid the group's finished shards' passes and log writes: more load, more waiting).
    A writer still waiting after a minute says so in its log.
    """

    def __init__(self, path: str | Path, lock_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.name = f"DuckDB {self.path}"

    def __repr__(self) -> str:
        return f"DuckDBResultsStore({str(self.path)!r})"

    def _connect(self, write: bool) -> Any:
        import duckdb

        if not write and not self.path.exists():
            return duckdb.connect(":memory:")  # nothing logged yet: every query finds no table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        delay, told = 0.05, 0.0
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not write)
                con.execute("SET enable_progress_bar = false")
                if write:
                    con.begin()
                return con
            except duckdb.IOException as exc:  # "Could not set lock on file": another process writes
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                waited = time.monotonic() - (deadline - self.lock_timeout)
                if waited >= told + 60:
                    told = waited
                    log.info("%s: waiting %.0f s for the write lock another process holds", self.name, waited)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _cursor(self, conn: Any) -> Any:
        # A DuckDB cursor is a second connection with its own transaction: work on the connection.
        return _Unclosed(conn)

    def _execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> None:
        cur.execute(sql, list(params) if params else None)

    def _ensure_tables(self, cur: Any) -> None:
        if _has_log_key(cur):
            self._drop_log_key(cur)
        for ddl in DUCKDB_DDL:
            self._execute(cur, ddl)

    def _drop_log_key(self, cur: Any) -> None:
        """Move a delivery log written with the primary key to a table without it (once)."""
        log.info("%s: moving c2b_delivery_log to its layout without a primary key (once)", self.name)
        self._execute(cur, DUCKDB_DDL[0].replace("IF NOT EXISTS c2b_delivery_log", "c2b_delivery_log_moving"))
        self._execute(cur, "INSERT INTO c2b_delivery_log_moving SELECT * FROM c2b_delivery_log")
        self._execute(cur, "DROP TABLE c2b_delivery_log")
        self._execute(cur, "ALTER TABLE c2b_delivery_log_moving RENAME TO c2b_delivery_log")

    def _part_is_new(self, cur: Any, part: tuple[str, str, str]) -> bool:
        """Whether no row of ``part`` can be logged yet: the part is not recorded, and every row of
        its run belongs to a recorded part (rows an earlier version wrote without parts are not)."""
        plan_id, run_id, _ = part
        cur.execute("SELECT count(*) FROM c2b_log_parts WHERE plan_id = ? AND run_id = ? AND part = ?", list(part))
        if cur.fetchall()[0][0]:
            return False
        cur.execute("SELECT (SELECT count(*) FROM c2b_delivery_log WHERE plan_id = $1 AND run_id = $2) = "
                    "(SELECT coalesce(sum(rows), 0) FROM c2b_log_parts WHERE plan_id = $1 AND run_id = $2)",
                    [plan_id, run_id])
        return bool(cur.fetchall()[0][0])

    def _record_part(self, cur: Any, part: tuple[str, str, str], rows: int) -> None:
        cur.execute("INSERT INTO c2b_log_parts VALUES (?, ?, ?, ?) ON CONFLICT (plan_id, run_id, part) "
                    "DO UPDATE SET rows = excluded.rows", [*part, rows])

    def _insert_log_batch(self, cur: Any, batch: list[LogRow], fresh: bool = False, unique: bool = False) -> None:
        import pyarrow as pa

        if hasattr(batch, "num_rows"):  # already columns (c2b.results.delivery_log.shard_log_table)
            table = cast(Any, batch).select(list(LOG_COLUMNS))
        else:  # a list per column (not zip(*batch): an iterator per row, and the GC runs they trigger)
            table = pa.table({name: pa.array([row[i] for row in batch], pa.timestamp("us") if name == "touched_at"
                                             else pa.string()) for i, name in enumerate(LOG_COLUMNS)})
        cur.register("c2b_log_batch", table)
        try:
            for sql in (_APPEND_UNIQUE_LOG if fresh and unique else _APPEND_LOG if fresh else _REPLACE_LOG):
                cur.execute(sql)
        finally:
            cur.unregister("c2b_log_batch")


def _has_log_key(cur: Any) -> bool:
    cur.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'c2b_delivery_log' "
                "AND constraint_type = 'PRIMARY KEY'")
    row = cur.fetchone()
    return bool(row and row[0])


# The delivery log's DDL on DuckDB: no primary key (see the module docstring); the rest as DDL,
# and the parts logged (shards), so that a shard's first write appends without a look for its rows.
DUCKDB_DDL = (DDL[0].replace(",\n        PRIMARY KEY (plan_id, run_id, touch, uid))", ")"), *DDL[1:],
              """CREATE TABLE IF NOT EXISTS c2b_log_parts (
        plan_id VARCHAR(64) NOT NULL, run_id VARCHAR(250) NOT NULL, part VARCHAR(64) NOT NULL,
        rows BIGINT NOT NULL, PRIMARY KEY (plan_id, run_id, part))""")
assert "PRIMARY KEY" not in DUCKDB_DDL[0]

_KEY = ("plan_id", "run_id", "touch", "uid")
# A batch replaces the rows with its keys (one row per key: DISTINCT ON), keeping the logged
# touched_at where the outcome is unchanged, as _UPSERT_LOG does on a keyed table.
_APPEND_LOG = (f"INSERT INTO c2b_delivery_log ({', '.join(LOG_COLUMNS)}) SELECT {', '.join(LOG_COLUMNS)} FROM "
               "(SELECT DISTINCT ON (plan_id, run_id, touch, uid) * FROM c2b_log_batch)",)
_APPEND_UNIQUE_LOG = (f"INSERT INTO c2b_delivery_log ({', '.join(LOG_COLUMNS)}) SELECT {', '.join(LOG_COLUMNS)} "
                      "FROM c2b_log_batch",)
_REPLACE_LOG = (
    "CREATE OR REPLACE TEMP TABLE c2b_log_new AS SELECT b.plan_id, b.run_id, b.variant, b.touch, b.uid, b.outcome, "
    "b.reason, CASE WHEN o.outcome = b.outcome THEN o.touched_at ELSE b.touched_at END AS touched_at "
    "FROM (SELECT DISTINCT ON (plan_id, run_id, touch, uid) * FROM c2b_log_batch) b "
    "LEFT JOIN c2b_delivery_log o ON " + " AND ".join(f"o.{c} = b.{c}" for c in _KEY),
    "DELETE FROM c2b_delivery_log USING c2b_log_batch b WHERE "
    + " AND ".join(f"c2b_delivery_log.{c} = b.{c}" for c in _KEY),
    f"INSERT INTO c2b_delivery_log ({', '.join(LOG_COLUMNS)}) SELECT {', '.join(LOG_COLUMNS)} FROM c2b_log_new",
    "DROP TABLE c2b_log_new",
)


class DbApiResultsStore(ResultsStore):
    """Any DB-API 2 connection factory (an Airflow SQL hook's ``get_conn``), PostgreSQL dialect."""

    def __init__(self, connect: Callable[[], Any], name: str = "dbapi", paramstyle: str | None = None) -> None:
        self._factory = connect
        self.paramstyle = paramstyle
        self.name = name

    def __repr__(self) -> str:
        return f"DbApiResultsStore({self.name!r})"

    def _connect(self, write: bool) -> Any:
        conn = self._factory()
        if self.paramstyle is None:
            from c2b.audience.warehouse import driver_paramstyle

            self.paramstyle = driver_paramstyle(conn)
        return conn

    def _insert_log_batch(self, cur: Any, batch: list[LogRow], fresh: bool = False, unique: bool = False) -> None:
        """COPY the rows into a temporary table and upsert from it (psycopg 2 or 3); VALUES otherwise."""
        driver = type(cur).__module__.split(".")[0]
        if driver not in ("psycopg2", "psycopg"):
            super()._insert_log_batch(cur, batch)
            return
        batch = _as_rows(batch)
        columns = ", ".join(LOG_COLUMNS)
        cur.execute("CREATE TEMP TABLE c2b_log_batch ON COMMIT DROP AS SELECT " + columns +
                    " FROM c2b_delivery_log WITH NO DATA")
        copy = f"COPY c2b_log_batch ({columns}) FROM STDIN"
        if driver == "psycopg2":
            import io

            cur.copy_expert(copy, io.StringIO(_copy_text(batch)))
        else:
            with cur.copy(copy) as pipe:
                for row in batch:
                    pipe.write_row(row)
        cur.execute(_UPSERT_LOG.format(values=f"SELECT {columns} FROM c2b_log_batch"))
        cur.execute("DROP TABLE c2b_log_batch")

    def _execute(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> None:
        if not params:
            cur.execute(sql)
            return
        style = self.paramstyle or "format"
        if style in ("format", "pyformat"):
            cur.execute(sql.replace("%", "%%").replace("?", "%s"), list(params))
        elif style == "qmark":
            cur.execute(sql, list(params))
        else:
            from c2b.audience.sql import bind

            parts = sql.split("?")
            named = "".join(p + (f":p{i}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
            query, args = bind(named, {f"p{i}": v for i, v in enumerate(params)}, style)
            cur.execute(query, args)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _as_rows(batch: list[LogRow] | Any) -> list[LogRow]:
    """Return a batch as rows (an Arrow table's, for the backends that take rows)."""
    if not hasattr(batch, "num_rows"):
        return batch  # type: ignore[no-any-return]
    columns: Any = batch
    return list(zip(*(columns.column(c).to_pylist() for c in LOG_COLUMNS), strict=True))


def _copy_text(batch: list[LogRow]) -> str:
    """Return the rows in PostgreSQL's COPY text format (NULL as ``\\N``, specials escaped).

    Every column but the uid repeats across a shard's rows: each distinct value is escaped once.
    """
    seen: dict[Any, str] = {None: "\\N"}

    def text(value: Any) -> str:
        out = seen.get(value)
        if out is None:
            out = seen[value] = str(value).translate(_COPY_ESCAPES)
        return out

    return "".join(f"{text(p)}\t{text(r)}\t{text(v)}\t{text(t)}\t{u.translate(_COPY_ESCAPES)}\t{text(o)}\t"
                   f"{text(why)}\t{text(at)}\n" for p, r, v, t, u, o, why, at in batch)


class _Unclosed:
    """A DuckDB connection used as its own cursor; closing it is left to the caller."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def close(self) -> None:
        pass
