"""Warehouses the segment SQL runs on, streamed as Arrow record batches of bounded size.

Two kinds cover every SQL warehouse:

- :class:`DuckDBWarehouse`: the embedded default, a DuckDB file opened read-only; DuckDB hands out
  Arrow batches itself.
- :class:`DbApiWarehouse`: any DB-API 2 driver, given a connection factory. Rows are fetched from a
  server-side (named) cursor where the driver has one (psycopg2/psycopg for PostgreSQL), so the
  server, not this process, holds the result, and each ``fetchmany`` becomes one Arrow batch.

Both bind the segment's ``:name`` parameters through the driver (:func:`c2b.audience.sql.bind`); values are
never formatted into SQL. Nothing here imports Airflow: :func:`c2b.airflow.resources.get_warehouse` turns
the ``c2b_warehouse`` connection into one of these.
"""

from __future__ import annotations

import importlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from c2b.audience.sql import bind
from c2b.audience.uids import uid_text

log = logging.getLogger(__name__)


class Warehouse(Protocol):
    """Something that runs a segment query and streams its rows as Arrow batches."""

    def record_batches(self, sql: str, params: Mapping[str, Any], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Run ``sql`` (``:name`` placeholders) with bound ``params``; yield batches of <= batch_rows.

        An empty result yields one empty batch, so the caller still learns the columns.
        """
        ...


DUCKDB_MEMORY_LIMIT = "256MB"


class DuckDBWarehouse:
    """A DuckDB database file, opened read-only so a running extract never blocks the loader.

    ``memory_limit`` bounds what DuckDB itself may use for the query (default 256MB: an extract
    shares its worker with other tasks); sorts and joins beyond it spill to ``temp_directory``
    (DuckDB's default: ``<file>.tmp`` next to the database). ``threads`` defaults to DuckDB's (all
    cores).
    """

    def __init__(self, path: str | Path, memory_limit: str | None = DUCKDB_MEMORY_LIMIT,
                 threads: int | None = None, temp_directory: str | None = None) -> None:
        self.path = Path(path)
        self.config: dict[str, Any] = {}
        if memory_limit:
            self.config["memory_limit"] = str(memory_limit)
        if threads:
            self.config["threads"] = int(threads)
        if temp_directory:
            self.config["temp_directory"] = str(temp_directory)

    def __repr__(self) -> str:
        return f"DuckDBWarehouse({str(self.path)!r})"

    def connect(self) -> Any:
        """Return a read-only DuckDB connection to the file."""
        import duckdb

        if not self.path.exists():
            raise FileNotFoundError(f"DuckDB warehouse {self.path} does not exist (run `make warehouse`)")
        con = duckdb.connect(str(self.path), read_only=True, config=self.config)
        con.execute("SET enable_progress_bar = false")  # no progress bars in task logs
        return con

    def record_batches(self, sql: str, params: Mapping[str, Any],
                       batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        con = self.connect()
        try:
            query, args = bind(sql, params, "dollar")
            reader = con.sql(query, params=args or None).to_arrow_reader(batch_rows)
            empty = True
            for batch in reader:
                empty = False
                yield batch
            if empty:  # an empty result still tells its columns
                yield _empty_batch(reader.schema)
        finally:
            con.close()


def driver_paramstyle(conn: Any) -> str:
    """Return the DB-API ``paramstyle`` of the driver a connection object comes from."""
    module = type(conn).__module__
    while module:
        style = getattr(importlib.import_module(module), "paramstyle", None)
        if isinstance(style, str):
            return style
        module = module.rpartition(".")[0]
    raise ValueError(f"cannot tell the paramstyle of {type(conn)!r}; pass paramstyle= explicitly")


# PostgreSQL type OIDs (psycopg2/psycopg report them as description type codes) -> Arrow types.
_PG_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64(),
    700: pa.float32(), 701: pa.float64(), 19: pa.string(), 25: pa.string(), 1042: pa.string(),
    1043: pa.string(), 2950: pa.string(), 114: pa.string(), 3802: pa.string(), 1082: pa.date32(),
    1114: pa.timestamp("us"), 1184: pa.timestamp("us", tz="UTC"), 1083: pa.time64("us"), 17: pa.binary(),
}


def _text(value: Any) -> str:
    """Return ``value`` as valid UTF-8 text; an undecodable part becomes U+FFFD (flagged later)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _column(values: Sequence[Any], arrow_type: pa.DataType | None) -> pa.Array:
    """Build one Arrow column from driver values, falling back to text rather than failing."""
    if arrow_type is not None and pa.types.is_string(arrow_type):
        try:
            return pa.array(values, pa.string())
        except (pa.ArrowException, UnicodeError):  # lone surrogates, JSON values, odd objects
            return pa.array([None if v is None else _text(v) for v in values], pa.string())
    if arrow_type is not None and pa.types.is_binary(arrow_type):
        return pa.array([None if v is None else bytes(v) for v in values], pa.binary())
    try:
        return pa.array(values, arrow_type)
    except (pa.ArrowException, UnicodeError, TypeError, ValueError):
        return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _description_type(desc: Sequence[Any], pg: bool) -> pa.DataType | None:
    """Return the Arrow type of a column from its cursor description, when the driver tells it."""
    code = desc[1]
    if not pg or not isinstance(code, int):
        return None
    if code == 1700:  # numeric: exact when the column declares precision and scale
        precision, scale = (desc[4], desc[5]) if len(desc) >= 6 else (None, None)
        if isinstance(precision, int) and isinstance(scale, int) and 0 < precision <= 38 and 0 <= scale <= precision:
            return pa.decimal128(precision, scale)
        return pa.float64()
    return _PG_TYPES.get(code)


def _plain(value: Any) -> Any:
    """Return a numeric value Arrow's float conversion accepts (``Decimal`` -> ``float``)."""
    return float(value) if isinstance(value, Decimal) else value


class DbApiWarehouse:
    """Any DB-API 2 database, given a factory of connections (e.g. an Airflow hook's ``get_conn``).

    ``paramstyle`` defaults to the driver module's own. ``server_side`` asks the driver for a named
    cursor (psycopg2, psycopg): rows then stay on the server until fetched, batch by batch. Drivers
    without named cursors fall back to ``fetchmany`` on a plain cursor, which some drivers buffer
    client-side.
    """

    def __init__(self, connect: Callable[[], Any], paramstyle: str | None = None, server_side: bool = True,
                 name: str = "dbapi") -> None:
        self._connect = connect
        self.paramstyle = paramstyle
        self.server_side = server_side
        self.name = name

    def __repr__(self) -> str:
        return f"DbApiWarehouse({self.name!r})"

    def _cursor(self, conn: Any, batch_rows: int) -> Any:
        if self.server_side:
            try:
                cur = conn.cursor(name=f"c2b_{uuid.uuid4().hex[:12]}")
                cur.itersize = batch_rows
                return cur
            except TypeError:
                log.warning("%s: driver %s has no named cursors; fetching with a plain cursor",
                            self.name, type(conn).__module__)
        return conn.cursor()

    def record_batches(self, sql: str, params: Mapping[str, Any],
                       batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        conn = self._connect()
        try:
            query, args = bind(sql, params, self.paramstyle or driver_paramstyle(conn))
            pg = type(conn).__module__.split(".")[0] in ("psycopg2", "psycopg")
            cur = self._cursor(conn, batch_rows)
            try:
                cur.execute(query, args)
                schema: pa.Schema | None = None
                while True:
                    rows = cur.fetchmany(batch_rows)
                    if schema is None:
                        schema = self._schema(cur.description, rows, pg)
                        if not rows:  # an empty result still tells its columns
                            yield _empty_batch(schema)
                    if not rows:
                        break
                    yield self._batch(rows, schema)
            finally:
                cur.close()
        finally:
            try:
                conn.rollback()  # a read-only transaction: end it before closing
            except Exception:  # noqa: BLE001 - some drivers have no transactions
                pass
            conn.close()

    @staticmethod
    def _schema(description: Sequence[Sequence[Any]] | None, rows: Sequence[Any], pg: bool) -> pa.Schema:
        """Fix each column's Arrow type once, from the driver's description or the first rows."""
        if not description:
            raise ValueError("the segment query returned no result set (is it a SELECT?)")
        names = [d[0] for d in description]
        fields = []
        for i, desc in enumerate(description):
            arrow_type = _description_type(desc, pg)
            if arrow_type is None:
                sample = [_row_values(r, names)[i] for r in rows[:1000]]
                inferred = _column(sample, None).type
                arrow_type = pa.string() if pa.types.is_null(inferred) else inferred
            fields.append(pa.field(names[i], arrow_type))
        return pa.schema(fields)

    @staticmethod
    def _batch(rows: Sequence[Any], schema: pa.Schema) -> pa.RecordBatch:
        """Build one batch in the fixed schema; a ``uid`` that does not fit it is passed on as text."""
        names = schema.names
        columns = list(zip(*(_row_values(r, names) for r in rows), strict=True))
        fields, arrays = [], []
        for values, fld in zip(columns, schema, strict=True):
            if fld.name == "uid":
                try:
                    arr = pa.array(values, fld.type)
                except (pa.ArrowException, UnicodeError, TypeError, ValueError):
                    # Mixed uid types (dynamic typing, bad data): each value becomes text by the
                    # uid rules, an invalid one a marker that the extract counts as malformed.
                    arr = pa.array([uid_text(v) for v in values], pa.string())
                    fld = pa.field("uid", pa.string())
            else:
                if pa.types.is_floating(fld.type):
                    values = tuple(_plain(v) for v in values)
                arr = _column(values, fld.type)
                if arr.type != fld.type:
                    raise ValueError(
                        f"column {fld.name!r} holds values of type {arr.type} after rows of type {fld.type}; "
                        f"CAST it to one type in the segment SQL")
            fields.append(fld)
            arrays.append(arr)
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


def _row_values(row: Any, names: list[str]) -> Sequence[Any]:
    """Return a row's values in column order (dict-like rows come from some cursor factories)."""
    if isinstance(row, Mapping):
        return [row[n] for n in names]
    return row


__all__ = ["DbApiWarehouse", "DuckDBWarehouse", "Warehouse", "driver_paramstyle"]
