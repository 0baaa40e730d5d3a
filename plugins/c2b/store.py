"""The sharded Redis audience store: one key per shard instead of one big key per plan.

Key layout of one run (``{...}`` is a Redis Cluster hash tag, so all keys of one shard live in the
same slot, while different shards spread across the cluster)::

    c2b:{<plan>:<run>:<shard>}:aud      ZSET   the shard's uids (score 0, paged by rank)
    c2b:{<plan>:<run>:<shard>}:attrs    HASH   uid -> JSON of template attributes (only if used)
    c2b:{<plan>:<run>:<shard>}:ckpt     HASH   delivery checkpoint (next page start)
    c2b:{<plan>:<run>:<shard>}:ledger   HASH   "<touch>|<uid>" -> p (pending) | s (sent) | f:<reason>

Every key carries a TTL. ``cleanup`` drops the audience, attribute and checkpoint keys; the ledger
keeps its own, longer TTL because it is the record of what was sent (a cleared and re-run DAG run
consults it and sends nothing twice).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from c2b.hashing import shard_indexes

ZADD_CHUNK = 1000  # members per ZADD: big enough to amortise round trips, small enough not to block


@dataclass(frozen=True)
class ShardKeys:
    """Names of the keys of one shard of one run."""

    plan_id: str
    run_id: str
    shard: int

    @property
    def tag(self) -> str:
        return "{" + f"{self.plan_id}:{self.run_id}:{self.shard}" + "}"

    @property
    def audience(self) -> str:
        return f"c2b:{self.tag}:aud"

    @property
    def attrs(self) -> str:
        return f"c2b:{self.tag}:attrs"

    @property
    def checkpoint(self) -> str:
        return f"c2b:{self.tag}:ckpt"

    @property
    def ledger(self) -> str:
        return f"c2b:{self.tag}:ledger"

    def run_scoped(self) -> list[str]:
        """Keys that only live for the run (dropped by cleanup)."""
        return [self.audience, self.attrs, self.checkpoint]


def _batched(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _json_default(value: object) -> str:
    return str(value)


@dataclass
class LoadResult:
    shards: dict[int, int]  # shard -> members

    @property
    def non_empty(self) -> list[int]:
        return sorted(s for s, n in self.shards.items() if n)

    @property
    def largest(self) -> int:
        return max(self.shards.values(), default=0)


def load_shards(redis: Any, staging_path: str | Path, plan_id: str, run_id: str, shards: int,
                attr_columns: Iterable[str] = (), ttl_seconds: int = 48 * 3600,
                batch_rows: int = 100_000) -> LoadResult:
    """Stream the staging Parquet into shard keys with pipelined ZADDs; return members per shard.

    Idempotent: ZADD/HSET of the same members again changes nothing, so a retried load is safe.
    """
    attr_columns = [c for c in attr_columns if c not in ("uid", "variant")]
    counts = {s: 0 for s in range(1, shards + 1)}
    pf = pq.ParquetFile(staging_path)
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["uid", *attr_columns]):
        uids: list[str] = batch.column("uid").to_pylist()
        idx = shard_indexes((u.encode("utf-8") for u in uids), shards)
        by_shard: dict[int, list[int]] = {}
        for row, s in enumerate(idx):
            by_shard.setdefault(s, []).append(row)
        attr_values = {c: batch.column(c).to_pylist() for c in attr_columns}
        pipe = redis.pipeline(transaction=False)
        for s, rows in by_shard.items():
            keys = ShardKeys(plan_id, run_id, s)
            for chunk in _batched(rows, ZADD_CHUNK):
                pipe.zadd(keys.audience, {uids[r]: 0 for r in chunk})
                if attr_columns:
                    pipe.hset(keys.attrs, mapping={
                        uids[r]: json.dumps({c: attr_values[c][r] for c in attr_columns},
                                            default=_json_default, ensure_ascii=False)
                        for r in chunk})
            counts[s] += len(rows)
        pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for s, n in counts.items():
        if n:
            for key in ShardKeys(plan_id, run_id, s).run_scoped():
                pipe.expire(key, ttl_seconds)
    pipe.execute()
    # Re-count from Redis: a retried load must report the true set sizes, not this attempt's rows.
    pipe = redis.pipeline(transaction=False)
    for s in counts:
        pipe.zcard(ShardKeys(plan_id, run_id, s).audience)
    return LoadResult(dict(zip(counts, (int(n) for n in pipe.execute()))))


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def read_page(redis: Any, keys: ShardKeys, start: int, page_size: int) -> list[str]:
    """Return up to ``page_size`` uids of the shard from rank ``start`` (the cursor)."""
    return [_text(m) for m in redis.zrange(keys.audience, start, start + page_size - 1)]


def read_attrs(redis: Any, keys: ShardKeys, uids: list[str]) -> list[dict[str, Any]]:
    """Return the template attributes of ``uids`` (empty dicts when none were stored)."""
    if not uids:
        return []
    raw = redis.hmget(keys.attrs, uids)
    return [json.loads(r) if r else {} for r in raw]


def drop_run(redis: Any, plan_id: str, run_id: str, shards: int) -> int:
    """Delete a run's audience, attribute and checkpoint keys; return how many existed."""
    pipe = redis.pipeline(transaction=False)
    for s in range(1, shards + 1):
        for key in ShardKeys(plan_id, run_id, s).run_scoped():
            pipe.delete(key)
    return sum(int(n) for n in pipe.execute())
