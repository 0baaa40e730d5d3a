"""Resolve the engine's resources from Airflow: Redis, the warehouse, channels, the kill switch.

Kept apart from the engine so that only this module (and the factory) imports Airflow.
Connection ids (set them in the UI, the CLI or ``AIRFLOW_CONN_*`` variables):

- ``c2b_redis``: the audience store (``redis://host:6379/?db=0``; for Redis Cluster the extras
  ``{"cluster": true, "startup_nodes": "h2:6379,h3:6379"}``, db 0);
- ``c2b_warehouse``: the warehouse. ``{"conn_type": "duckdb", "host": "/path/warehouse.duckdb"}``
  for the embedded DuckDB file (extras ``memory_limit``, ``threads``); any other ``conn_type`` whose
  hook is a common-sql ``DbApiHook`` (``postgres``, ``mysql``, ``snowflake``...) runs the segment
  through that hook's DB-API connection, with a server-side cursor where the driver has one;
- ``c2b_results``: the results store (delivery log, attribution; :mod:`c2b.results.store`):
  ``{"conn_type": "duckdb", "host": "/path/results.duckdb"}`` or any SQL connection whose hook is a
  common-sql ``DbApiHook`` and whose SQL has ``ON CONFLICT`` (``postgres``). Without the connection,
  a DuckDB file ``results.duckdb`` in the c2b data folder (:func:`c2b.settings.data_dir`);
- one connection per channel gateway, named by the touch's ``connection`` field.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from c2b.audience.warehouse import DUCKDB_MEMORY_LIMIT, DbApiWarehouse, DuckDBWarehouse, Warehouse
from c2b.channels import Channel, ChannelConfig, channel_class, make_channel
from c2b.plan.model import Plan
from c2b.settings import outbox_dir, safe_name

REDIS_CONN_ID = "c2b_redis"
WAREHOUSE_CONN_ID = "c2b_warehouse"
RESULTS_CONN_ID = "c2b_results"


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
    hook = _sql_hook(conn, conn_id)
    # Named (server-side) cursors are a psycopg feature; other drivers fetch with fetchmany on a
    # plain cursor. The paramstyle comes from the driver module. (No c2b-specific extras: hooks
    # such as PostgresHook pass every extra on to the driver's connect().)
    return DbApiWarehouse(hook.get_conn, server_side=conn.conn_type in ("postgres", "redshift"),
                          name=f"{conn_id} ({conn.conn_type})")


def get_results_store(conn_id: str = RESULTS_CONN_ID) -> Any:  # -> c2b.results.store.ResultsStore
    """Return the results store of the ``c2b_results`` connection (default: a DuckDB file)."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    from c2b.results.store import DbApiResultsStore, DuckDBResultsStore
    from c2b.settings import data_dir

    try:
        conn = _get_connection(conn_id)
    except AirflowNotFoundException:
        return DuckDBResultsStore(data_dir() / "results.duckdb")
    if conn.conn_type == "duckdb":
        path = conn.host or conn.extra_dejson.get("path")
        if not path:
            raise ValueError(f"connection {conn_id!r} (duckdb) needs the results file's path as its host")
        return DuckDBResultsStore(path)
    return DbApiResultsStore(_sql_hook(conn, conn_id).get_conn, name=f"{conn_id} ({conn.conn_type})")


def _sql_hook(conn: Any, conn_id: str) -> Any:
    """Return the common-sql ``DbApiHook`` of a connection, or raise saying what to configure."""
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    try:
        hook = conn.get_hook()
    except Exception as exc:  # noqa: BLE001 - unknown conn_type or provider not installed
        raise ValueError(f"connection {conn_id!r} has conn_type {conn.conn_type!r}, which has no SQL hook "
                         f"here ({exc}); use duckdb or install the provider of that database") from exc
    if not isinstance(hook, DbApiHook):
        raise ValueError(f"connection {conn_id!r} has conn_type {conn.conn_type!r} whose hook "
                         f"{type(hook).__name__} is not a SQL (DbApiHook) hook")
    return hook


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


def make_channels(plan: Plan, run_id: str, redis: Any = None) -> dict[str, Channel]:
    """Build one channel instance per touch of the plan (keyed by touch name).

    HTTP channels read their gateway from the touch's ``connection`` (default: the channel class's
    ``default_connection``, e.g. ``c2b_sms``, ``c2b_call`` for outbound calls): URL from
    host/port/schema or extra ``url``, the token from the password, and extras ``batch_size``,
    ``timeout``, ``rate_limit``, ``burst``. ``inapp`` writes to the ``c2b_redis`` store unless its
    connection says otherwise; ``outbox`` writes files.
    """
    run_dir = str(outbox_dir() / plan.id / safe_name(run_id))
    channels: dict[str, Channel] = {}
    for touch in plan.touches:
        conn_id = touch.connection or channel_class(touch.channel).default_connection
        if conn_id:
            try:
                conn = _get_connection(conn_id)
            except Exception as exc:
                raise ValueError(f"touch {touch.name!r} ({touch.channel}) needs the Airflow Connection "
                                 f"{conn_id!r}: {exc}") from exc
            config = ChannelConfig(url=connection_url(conn), token=conn.password or "",
                                   extra=dict(conn.extra_dejson), run_dir=run_dir, conn_id=conn_id, redis=redis)
        else:
            config = ChannelConfig(run_dir=run_dir, redis=redis, conn_id=f"{touch.channel}")
        channels[touch.name] = make_channel(touch.channel, config)
    return channels


def read_kill_variable() -> Any:
    """Return the ``c2b_kill_switch`` Airflow Variable (``None`` when unset)."""
    from airflow.sdk import Variable

    from c2b.delivery.controls.kill_switch import VARIABLE

    return Variable.get(VARIABLE, default=None)


def kill_switch(redis: Any, plan_id: str, with_variable: bool = True):  # -> KillSwitch
    """Return the plan's kill switch: Redis flags every page, the Airflow Variable every ~2 s."""
    from c2b.delivery.controls.kill_switch import KillSwitch

    return KillSwitch(redis, plan_id, read_kill_variable if with_variable else None)


def deliver_shard(plan: Plan, run_id: str, shard: int, params: dict[str, Any]) -> dict[str, Any]:
    """The ``deliver`` task of one shard: send it, then tell Airflow how it ended.

    - done: return the shard's stats (XCom, read by ``report``);
    - stopped by the kill switch: fail the task *without retries* with a message saying which
      switch and how to resume (turn it off, then Clear the run: cleanup has dropped the shard
      keys, and the ledger makes the re-run send only what was not sent). The run shows failed in the grid, on purpose;
    - the shard's keys missing or not what was loaded (:class:`~c2b.store.run_meta.RunStateLost`):
      fail *without retries*, saying to re-run the plan;
    - users parked by quiet hours: reschedule the task (state ``up_for_reschedule``) for when the
      earliest of them may be messaged; it frees its worker slot meanwhile.
    """
    return deliver_shards(plan, run_id, [shard], params)[0]


def _log_shard_memory(shard: int, stats: dict[str, Any]) -> None:
    """Say in the task log what a shard of a group left behind: a group's memory is one process's."""
    import logging

    from c2b.process_memory import memory_mib

    now, peak = memory_mib()
    logging.getLogger(__name__).info("shard %s done: %s users; task process memory %s MiB (peak %s MiB)",
                                     shard, stats.get("users"), now, peak)


def deliver_shards(plan: Plan, run_id: str, shards: list[int], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``deliver`` task of a group of shards (``delivery.shards_per_task``): each in turn, as
    :func:`deliver_shard` does one; return their stats in order.

    The kill switch or lost keys fail the task at the shard that meets them (the shards after it
    are not started: Clear the run to resume, as for one shard). Users parked by quiet hours in any
    shard reschedule the task once every shard has had its pass, for the earliest due time; the
    rescheduled task passes over the finished shards again, which their ledgers make cheap and
    send-free.
    """
    from datetime import datetime

    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    from c2b import steps
    from c2b.delivery.contacts import record_contacts
    from c2b.delivery.histories import HistoryBatch
    from c2b.delivery.reentry import record_sends
    from c2b.results.delivery_log import DeliveryLogBatch
    from c2b.store.run_meta import RunStateLost

    redis = get_redis()
    switch = kill_switch(redis, plan.id)
    store = get_results_store()
    out: list[dict[str, Any]] = []
    # The shards' sent users go to the contact and re-entry histories together (one rewrite of a
    # history bucket per batch, not per shard); written before the task ends, however it ends.
    histories = HistoryBatch(redis, plan, run_id, record_sends(plan, record_contacts),
                             int(plan.delivery.key_ttl_hours * 3600))
    # The shards' delivery-log rows likewise: one write for many shards, before the task ends.
    log_rows = DeliveryLogBatch(store, plan, run_id)
    try:
        for shard in shards:
            channels = make_channels(plan, run_id, redis)  # a shard's send loop closes its channels at its end
            try:
                stats = steps.step_deliver(plan, run_id, shard, redis, channels, switch, params, results_store=store,
                                           history_batch=histories, log_batch=log_rows)
            except RunStateLost as exc:  # lost keys stay lost: retrying would only "deliver" an empty shard
                raise AirflowFailException(str(exc)) from exc
            if stats["stopped"]:
                raise AirflowFailException(
                    f"shard {shard} STOPPED by the kill switch ({stats['stop_reason']}) after {stats['users']} users; "
                    f"sent so far: {sum(n for k, n in stats['counts'].items() if k.endswith('|sent'))}. "
                    "Turn the switch off and Clear the whole run to resume (cleanup has dropped this run's shard "
                    "keys, so the run extracts and loads again): the ledger sends nothing twice.")
            out.append(stats)
            _log_shard_memory(shard, stats)
    except BaseException:
        try:
            histories.flush()  # the shards done before the failure: their sends reach the histories now
        except Exception:  # noqa: BLE001 (unmarked shards are written by the retry or by cleanup)
            import logging

            logging.getLogger(__name__).exception("could not write the finished shards' sends to the histories")
        try:
            log_rows.flush()  # and their rows the delivery log
        except Exception:  # noqa: BLE001 (the retry logs every shard of the task again)
            import logging

            logging.getLogger(__name__).exception("could not write the finished shards' delivery-log rows")
        raise
    histories.flush()
    log_rows.flush()
    waiting = [st for st in out if st["deferred"]]
    if waiting:
        dues = [datetime.fromisoformat(st["next_due"]) if st["next_due"] else datetime.now(UTC) for st in waiting]
        when = min(dues)
        import logging

        logging.getLogger(__name__).info(
            "shard %s: %s messages wait for their send hours; rescheduling for %s",
            ", ".join(str(st["shard"]) for st in waiting), sum(st["deferred"] for st in waiting), when.isoformat())
        raise AirflowRescheduleException(when)
    return out
