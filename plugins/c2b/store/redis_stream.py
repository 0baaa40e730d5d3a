"""Stream pre-encoded commands to Redis at close to the server's own ingest rate.

redis-py's pipeline builds one Python object per argument and waits for every reply before the
next batch; at millions of members that client work, not Redis, is the limit (~0.65M members/s for
1000-member ZADDs with hiredis). The loader instead hands over commands already encoded as RESP
(numpy-built byte blocks, or hiredis' ``pack_command``), writes them straight to the socket of the
node that owns each key, and reads the replies one flush behind: while Redis works through flush
``k`` the client is already encoding flush ``k+1``.

Works for a standalone ``redis.Redis`` and for ``redis.cluster.RedisCluster`` (the RedisHook's
``cluster: true`` mode): in a cluster each command goes to the primary of its key's slot, over one
connection per node. Commands are never sent in MULTI/EXEC, so nothing spans slots. An error reply
(e.g. ``MOVED`` while the cluster is resharding) is collected, every remaining reply is still read
so the connection stays in sync, and :meth:`CommandStream.finish` raises :class:`StreamError`; the
loader is idempotent, so Airflow's retry of the task is the recovery.
"""

from __future__ import annotations

from typing import Any

FLUSH_BYTES = 1 << 20  # send in ~1 MB writes: few syscalls, and little unacknowledged data per node


class StreamError(RuntimeError):
    """Redis answered at least one streamed command with an error."""


class _Node:
    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn = pool.get_connection()
        self.buf: list[Any] = []
        self.buf_bytes = 0
        self.buf_cmds = 0
        self.unread = 0  # replies of commands already sent


class CommandStream:
    """Send commands to the node owning each key, many in flight; check every reply at the end."""

    def __init__(self, redis: Any, flush_bytes: int = FLUSH_BYTES) -> None:
        self._redis = redis
        self._cluster = hasattr(redis, "get_node_from_key")
        self._flush_bytes = flush_bytes
        self._nodes: dict[str, _Node] = {}
        self._by_key: dict[str, _Node] = {}
        self.errors: list[str] = []
        self.commands = 0

    def _node(self, key: str) -> _Node:
        node = self._by_key.get(key)
        if node is not None:
            return node
        if self._cluster:
            cluster_node = self._redis.get_node_from_key(key)
            name = cluster_node.name
            if name not in self._nodes:
                pool = self._redis.get_redis_connection(cluster_node).connection_pool
                self._nodes[name] = _Node(pool)
        else:
            name = "standalone"
            if name not in self._nodes:
                self._nodes[name] = _Node(self._redis.connection_pool)
        node = self._by_key[key] = self._nodes[name]
        return node

    def pack(self, key: str, *args: Any) -> list[bytes]:
        """Return ``args`` encoded as one RESP command (hiredis when installed)."""
        return self._node(key).conn.pack_command(*args)

    def command(self, key: str, *args: Any) -> None:
        """Queue one command whose key (routing) is ``key``."""
        self.send(key, self.pack(key, *args))

    def send(self, key: str, chunks: list[Any], commands: int = 1) -> None:
        """Queue ``commands`` already-encoded commands (byte chunks) for the node owning ``key``."""
        node = self._node(key)
        node.buf.extend(chunks)
        node.buf_bytes += sum(len(c) for c in chunks)
        node.buf_cmds += commands
        self.commands += commands
        if node.buf_bytes >= self._flush_bytes:
            self._flush(node)

    def _flush(self, node: _Node) -> None:
        # Read what the previous flush produced *after* sending this one, so the server always
        # has work queued while the client encodes the next flush.
        behind = node.unread
        if node.buf:
            node.conn.send_packed_command([b"".join(node.buf)], check_health=False)
            node.unread += node.buf_cmds
            node.buf, node.buf_bytes, node.buf_cmds = [], 0, 0
        self._read(node, behind)

    def _read(self, node: _Node, count: int) -> None:
        for _ in range(count):
            try:
                node.conn.read_response()
            except Exception as exc:  # an error reply: keep reading so the connection stays in sync
                if len(self.errors) < 10:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            node.unread -= 1

    def finish(self) -> int:
        """Send everything queued, wait for every reply; return the number of commands sent."""
        for node in self._nodes.values():
            self._flush(node)
            self._read(node, node.unread)
        if self.errors:
            raise StreamError(f"Redis refused {len(self.errors)}+ streamed command(s): {'; '.join(self.errors)}")
        return self.commands

    def close(self) -> None:
        """Give the connections back (a connection with unread replies is closed, not reused)."""
        for node in self._nodes.values():
            if node.unread or node.buf:
                node.conn.disconnect()
            node.pool.release(node.conn)
        self._nodes.clear()
        self._by_key.clear()

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
