"""Warehouses the segment SQL runs on, streamed as Arrow record batches.

The embedded default is a DuckDB file. Other warehouses plug in through the same small interface
(:class:`Warehouse`); the Airflow glue builds one from an Airflow Connection.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from c2b.sql import to_paramstyle


class Warehouse(Protocol):
    """Something that runs a segment query and streams its rows as Arrow batches."""

    def record_batches(self, sql: str, params: Mapping[str, Any], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Run ``sql`` (``:name`` placeholders) with bound ``params``; yield batches."""
        ...


class DuckDBWarehouse:
    """A DuckDB database file, opened read-only so a running extract never blocks the loader."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record_batches(self, sql: str, params: Mapping[str, Any], batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
        import duckdb

        if not self.path.exists():
            raise FileNotFoundError(f"DuckDB warehouse {self.path} does not exist (run `make warehouse`)")
        con = duckdb.connect(str(self.path), read_only=True)
        try:
            reader = con.execute(to_paramstyle(sql, "dollar"), dict(params)).to_arrow_reader(batch_rows)
            yield from reader
        finally:
            con.close()
