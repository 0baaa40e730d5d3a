"""Resolve the engine's resources from Airflow: Redis, the warehouse, channels, the kill switch.

Kept apart from the engine so that only this module (and the factory) imports Airflow.
Connection ids (set them in the UI, the CLI or ``AIRFLOW_CONN_*`` variables):

- ``c2b_redis``: the audience store (``redis://host:6379/?db=0``; for Redis Cluster the extras
  ``{"cluster": true, "startup_nodes": "h2:6379,h3:6379"}``, db 0);
- ``c2b_warehouse``: the warehouse. ``{"conn_type": "duckdb", "host": "/path/warehouse.duckdb"}``
  for the embedded DuckDB file (extras ``memory_limit``, ``threads``); any other ``conn_type`` whose
  hook is a common-sql ``DbApiHook`` (``postgres``, ``mysql``, ``snowflake``...) runs the segment
  through that hook's DB-API connection, with a server-side cursor where the driver has one;
- one connection per channel gateway, named by the touch's ``connection`` field.
"""

from __future__ import annotations

from typing import Any

from c2b.channels import Channel, ChannelConfig, make_channel
from c2b.plan import Plan
from c2b.settings import outbox_dir, safe_name
from c2b.warehouse import DUCKDB_MEMORY_LIMIT, DbApiWarehouse, DuckDBWarehouse, Warehouse

REDIS_CONN_ID = "c2b_redis"
WAREHOUSE_CONN_ID = "c2b_warehouse"


def _get_connection(conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    return BaseHook.get_connection(conn_id)


def get_redis() -> Any:
    """Return a redis-py client for the ``c2b_redis`` connection.

    With the extra ``cluster: true`` RedisHook returns a ``RedisCluster``; the store only uses
    single-key commands and per-slot pipelines, so every step of a run works on either.
    """
    from airflow.providers.redis.hooks.redis import RedisHook

    return RedisHook(redis_conn_id=REDIS_CONN_ID).get_conn()


def get_warehouse(conn_id: str = WAREHOUSE_CONN_ID) -> Warehouse:
    """Return the warehouse of the ``c2b_warehouse`` connection: a DuckDB file or any SQL hook."""
    conn = _get_connection(conn_id)
    extra = conn.extra_dejson
    if conn.conn_type == "duckdb":
        return DuckDBWarehouse(conn.host or extra.get("path", ""),
                               memory_limit=extra.get("memory_limit", DUCKDB_MEMORY_LIMIT),
                               threads=extra.get("threads"), temp_directory=extra.get("temp_directory"))
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    try:
        hook = conn.get_hook()
    except Exception as exc:  # noqa: BLE001 - unknown conn_type or provider not installed
        raise ValueError(f"connection {conn_id!r} has conn_type {conn.conn_type!r}, which has no SQL hook "
                         f"here ({exc}); use duckdb or install the provider of that database") from exc
    if not isinstance(hook, DbApiHook):
        raise ValueError(f"connection {conn_id!r} has conn_type {conn.conn_type!r} whose hook "
                         f"{type(hook).__name__} is not a SQL (DbApiHook) hook")
    # Named (server-side) cursors are a psycopg feature; other drivers fetch with fetchmany on a
    # plain cursor. The paramstyle comes from the driver module. (No c2b-specific extras: hooks
    # such as PostgresHook pass every extra on to the driver's connect().)
    return DbApiWarehouse(hook.get_conn, server_side=conn.conn_type in ("postgres", "redshift"),
                          name=f"{conn_id} ({conn.conn_type})")


def connection_url(conn: Any) -> str:
    """Return the base URL of an HTTP-like connection (``host`` may already be a full URL)."""
    if conn.extra_dejson.get("url"):
        return str(conn.extra_dejson["url"])
    host = conn.host or ""
    if "://" in host:
        return host
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema}" if conn.schema else ""
    return f"{scheme}://{host}{port}{path}"


def make_channels(plan: Plan, run_id: str) -> dict[str, Channel]:
    """Build one channel instance per touch of the plan (keyed by touch name)."""
    run_dir = str(outbox_dir() / plan.id / safe_name(run_id))
    channels: dict[str, Channel] = {}
    for touch in plan.touches:
        if touch.connection:
            conn = _get_connection(touch.connection)
            config = ChannelConfig(url=connection_url(conn), token=conn.password or "",
                                   extra=dict(conn.extra_dejson), run_dir=run_dir)
        else:
            config = ChannelConfig(run_dir=run_dir)
        channels[touch.name] = make_channel(touch.channel, config)
    return channels


def kill_switch(redis: Any, plan_id: str):  # -> Callable[[], bool]
    """Return a check that is true when the global or the plan's kill switch is on.

    Switches are Redis flags (``c2b:kill`` and ``c2b:kill:<plan>``), so all workers see a flip at
    their next page; ``python -m c2b kill`` sets them.
    """
    keys = ["c2b:kill", f"c2b:kill:{plan_id}"]
    return lambda: any(redis.exists(k) for k in keys)
