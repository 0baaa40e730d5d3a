"""The sharded Redis audience store: one key per shard instead of one big key per plan.

Key layout of one run (``{...}`` is a Redis Cluster hash tag: all keys of one shard share a slot,
while different shards hash to different slots and so spread over the cluster's nodes)::

    c2b:{<plan>:<run>}:meta             HASH    the run's layout: encoding, shard count, sizes, state
    c2b:{<plan>:<run>:<shard>}:pk       STRING  packed encoding: uids as little-endian int64, 8 bytes each
    c2b:{<plan>:<run>:<shard>}:aud      ZSET    zset encoding: uids scored by their position, paged by rank
    c2b:{<plan>:<run>:<shard>}:attrs:c<c> STRING template attributes (only if used) of the members at
                                                ranks [c*C, (c+1)*C), C = ``attr_chunk`` in the meta
    c2b:{<plan>:<run>:<shard>}:ckpt     HASH    delivery checkpoint (next page start)
    c2b:{<plan>:<run>:<shard>}:rcpt     HASH    answer of the ledger's last decision (replay guard)
    c2b:{<plan>:<run>:<shard>}:ledger   HASH    "<touch>|<uid>" -> p (pending) | d (deferred): not final yet
    c2b:{<plan>:<run>:<shard>}:out:<b>  STRING  final outcomes as per-uid records (c2b.delivery.ledger)

A shard holds its uids in exactly one of ``pk`` / ``aud``: ``packed`` when every uid of the run is a
canonical integer (~8.5 bytes per member, see :mod:`c2b.store.packed`), ``zset`` otherwise (~105 bytes).
The meta key records which, so readers and ``c2b store-check`` know the layout.

The attributes of a shard are stored by position, in chunks of ``C`` members (``attr_chunk`` in the
meta, ``ATTR_CHUNK`` = 1,024): chunk ``c`` holds the attributes of the members at ranks
``[c*C, (c+1)*C)``, in the order :func:`read_page` returns them, as one JSON array per attribute
column (``[[v0, v1, ...], [w0, w1, ...]]``, columns in the meta's ``attrs`` order; each value is
what ``json.dumps(value, default=str)`` writes, so ints, floats, bools, None and text come back as
such and timestamps, dates and decimals as their ``str``). A nickname costs ~11 bytes a member and
a chunk ~11 KB. The chunks share the shard's hash tag (one slot), so a page's attributes are one
MGET of the one or two chunks it spans, and one ``json.loads`` per chunk (:class:`AttrReader`,
which also finds a uid's rank for the reads by uid of the deferred pass). A reader refuses a run
loaded with another ``format``: missing or foreign state is an error, never "no attributes".

Every key carries a TTL (the plan's ``delivery.key_ttl_hours``), set when the key is created, so an
abandoned run cleans itself up. ``cleanup`` drops the meta, audience, attribute, checkpoint and receipt keys;
the ledger keeps its own, longer TTL because it is the record of what was sent (a cleared and re-run
DAG run consults it and sends nothing twice); ``cleanup`` moves it out of Redis to a file, and the
load of a cleared run puts it back first (:mod:`c2b.delivery.ledger_archive`).

No big keys: before writing, the loader hashes every uid once to get the exact size of every shard
for every allowed shard count (:mod:`c2b.store.sizing`) and refuses a count that would put more than
``delivery.max_shard_members`` users into one key, naming the count to use (``shards: auto`` picks it).

Paging: a shard's members have a fixed order, the order the load wrote them in (``packed``: byte
offset; ``zset``: the score is the member's position), so a cursor is a plain position and the
attribute chunks line up with it; a retried delivery resumes from its checkpoint. A load
of the same staging file again is a no-op; a load of a *different* staging file for the same run
drops the run's keys (checkpoints included: positions changed) and writes afresh.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from c2b.hashing import MAX_SHARDS, murmur3_32_arrow, murmur3_32_matrix, shard_of_hashes, string_groups
from c2b.store import packed
from c2b.store.redis_stream import CommandStream
from c2b.store.sizing import choose_shard_count, shard_sizes

log = logging.getLogger(__name__)

FORMAT = "3"  # bump when the layout changes in a way old readers cannot follow (3: attrs in position chunks)
ZADD_CHUNK = 1000  # members per ZADD: big enough to amortise round trips, small enough not to block
ATTR_CHUNK = 1024  # members per attrs chunk: ~11 KB for a nickname; 1 MB only past ~1 KB of attributes a member
ATTR_CHUNK_WARN_BYTES = 1 << 20  # a bigger chunk is logged: lower attr_chunk (or fewer attribute columns)
DEFAULT_BATCH_ROWS = 1 << 18
DEFAULT_MAX_SHARD_MEMBERS = 100_000
ENCODINGS = ("auto", "zset", "packed")


class StoreError(ValueError):
    """The audience cannot be stored as asked; the message says why and what to change."""


def _tag_part(text: str) -> str:
    # A brace inside a plan or run id would end the hash tag early and pile shards onto one slot;
    # percent-escape braces (and the escape character itself) so the mapping stays one-to-one.
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def meta_key(plan_id: str, run_id: str) -> str:
    """Return the name of a run's meta key (its layout: encoding, shard count, sizes, state)."""
    return "c2b:{" + f"{_tag_part(plan_id)}:{_tag_part(run_id)}" + "}:meta"


@dataclass(frozen=True)
class ShardKeys:
    """Names of the keys of one shard of one run."""

    plan_id: str
    run_id: str
    shard: int

    @cached_property
    def tag(self) -> str:  # cached: the ledger names a key of the shard for every message
        return "{" + f"{_tag_part(self.plan_id)}:{_tag_part(self.run_id)}:{self.shard}" + "}"

    @property
    def audience(self) -> str:
        """The ZSET of the shard's uids (``zset`` encoding)."""
        return f"c2b:{self.tag}:aud"

    @property
    def packed(self) -> str:
        """The STRING of the shard's uids as int64 (``packed`` encoding)."""
        return f"c2b:{self.tag}:pk"

    def attrs(self, chunk: int) -> str:
        """Chunk ``chunk`` of the shard's attributes: the members at ranks ``[chunk*C, (chunk+1)*C)``."""
        return f"c2b:{self.tag}:attrs:c{chunk}"

    def attr_keys(self, chunks: int) -> list[str]:
        """The shard's first ``chunks`` attribute chunks (:func:`attr_chunk_count` says how many it has)."""
        return [self.attrs(c) for c in range(chunks)]

    @property
    def checkpoint(self) -> str:
        return f"c2b:{self.tag}:ckpt"

    @property
    def ledger(self) -> str:
        return f"c2b:{self.tag}:ledger"

    @property
    def receipts(self) -> str:
        return f"c2b:{self.tag}:rcpt"

    def run_scoped(self, attr_chunks: int = 0) -> list[str]:
        """Keys that only live for the run (dropped by cleanup); ``attr_chunks`` from
        :func:`attr_chunk_count` of the run's meta."""
        return [self.audience, self.packed, *self.attr_keys(attr_chunks), self.checkpoint, self.receipts]

    def legacy_attr_keys(self, parts: int) -> list[str]:
        """The attribute hashes of a run loaded by format 2 (``attrs:<j>``, j < ``attr_parts``), for cleanup."""
        return [f"c2b:{self.tag}:attrs:{j}" for j in range(parts)]


def attr_chunk_count(layout: dict[str, Any] | None, shard: int) -> int:
    """Return how many attribute chunks shard ``shard`` of a run with this meta has (0 without attributes)."""
    if not layout or not layout.get("attrs") or not layout.get("attr_chunk"):
        return 0
    sizes = layout.get("sizes") or []
    size = sizes[shard - 1] if 0 < shard <= len(sizes) else 0
    return -(-int(size) // int(layout["attr_chunk"]))


@dataclass
class LoadResult:
    shards: dict[int, int]  # shard -> members
    encoding: str = "zset"
    shard_count: int = 0
    reused: bool = False  # the same staging file was already loaded for this run: nothing written
    scan_seconds: float = 0.0
    write_seconds: float = 0.0

    @property
    def non_empty(self) -> list[int]:
        return sorted(s for s, n in self.shards.items() if n)

    @property
    def largest(self) -> int:
        return max(self.shards.values(), default=0)

    @property
    def members(self) -> int:
        return sum(self.shards.values())


@dataclass
class AudienceScan:
    """What one read of the staging file's uid column tells before anything is written."""

    rows: int = 0
    histogram: Any = None  # numpy int64[1024]: users per abs(murmur3_32) & 1023
    integers: bool = True  # every uid is a canonical int64
    non_integer_example: str | None = None


def scan_staging(path: Any, batch_rows: int = DEFAULT_BATCH_ROWS, check_integers: bool = True) -> AudienceScan:
    """Hash every uid of the staging Parquet once: shard-size histogram and integer check.

    ``path``: a local path or a URL of the run artifacts' storage (:mod:`c2b.storage`)."""
    import numpy as np
    import pyarrow.parquet as pq

    from c2b import storage

    scan = AudienceScan(histogram=np.zeros(MAX_SHARDS, dtype=np.int64), integers=check_integers)
    with storage.arrow_source(path) as source, storage.guard("reading", path):
        _scan(pq.ParquetFile(source), scan, batch_rows)
    return scan


def _scan(file: Any, scan: AudienceScan, batch_rows: int) -> None:
    import numpy as np

    for batch in file.iter_batches(batch_size=batch_rows, columns=["uid"]):
        uids = batch.column(0)
        scan.rows += len(uids)
        buckets = np.abs(murmur3_32_arrow(uids).astype(np.int64)) & (MAX_SHARDS - 1)
        scan.histogram += np.bincount(buckets, minlength=MAX_SHARDS)
        if scan.integers and packed.canonical_ints(uids) is None:
            scan.integers = False
            scan.non_integer_example = packed.first_non_canonical(uids)


def _fingerprint(path: Any, attr_columns: list[str]) -> str:
    from c2b import storage

    return json.dumps([*storage.fingerprint(path), attr_columns])


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _json_default(value: object) -> str:
    return str(value)


def read_layout(redis: Any, plan_id: str, run_id: str) -> dict[str, Any] | None:
    """Return a run's meta (encoding, shards, sizes, state ...) or None when it has none."""
    raw = redis.hgetall(meta_key(plan_id, run_id))
    if not raw:
        return None
    meta = {_text(k): _text(v) for k, v in raw.items()}
    out: dict[str, Any] = dict(meta)
    for name in ("shards", "members", "max_shard_members", "ttl_seconds", "attr_parts", "attr_chunk"):
        if name in meta:
            out[name] = int(meta[name])
    for name in ("sizes", "attrs"):
        if name in meta:
            out[name] = json.loads(meta[name])
    return out


def _stored_sizes(redis: Any, plan_id: str, run_id: str, shards: int, encoding: str) -> list[int]:
    pipe = redis.pipeline(transaction=False)
    for s in range(1, shards + 1):
        keys = ShardKeys(plan_id, run_id, s)
        if encoding == "packed":
            pipe.strlen(keys.packed)
        else:
            pipe.zcard(keys.audience)
    div = packed.WIDTH if encoding == "packed" else 1
    return [int(n) // div for n in pipe.execute()]


def load_shards(redis: Any, staging_path: Any, plan_id: str, run_id: str, shards: int | str,
                attr_columns: Iterable[str] = (), ttl_seconds: int = 48 * 3600,
                batch_rows: int = DEFAULT_BATCH_ROWS, max_shard_members: int = DEFAULT_MAX_SHARD_MEMBERS,
                encoding: str = "auto", attr_chunk: int = ATTR_CHUNK) -> LoadResult:
    """Stream the staging Parquet into the run's shard keys; return members per shard.

    ``shards`` is a power of two or ``"auto"``; ``encoding`` is ``auto`` (packed when every uid is a
    canonical integer), ``packed`` or ``zset``. Raises :class:`~c2b.store.sizing.ShardCountError`
    (nothing written) when a shard would exceed ``max_shard_members``, and :class:`StoreError` when
    ``packed`` is forced on non-integer uids. Loading the same file again is a no-op.
    ``attr_chunk``: members per attribute chunk (tests lower it).

    ``staging_path`` is a local path or a URL of the run artifacts' storage (:mod:`c2b.storage`); a
    missing file raises :class:`~c2b.storage.StorageMissing`, a store that fails
    :class:`~c2b.storage.StorageError` (both name the URL).
    """
    if encoding not in ENCODINGS:
        raise StoreError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    path = staging_path
    attrs = [c for c in attr_columns if c not in ("uid", "variant")]
    started = time.monotonic()
    scan = scan_staging(path, batch_rows, check_integers=encoding != "zset")
    n = choose_shard_count(scan.histogram, shards, max_shard_members)
    if encoding == "packed" and not scan.integers:
        raise StoreError(f"encoding: packed needs canonical integer uids, but the audience has "
                         f"{scan.non_integer_example!r}; use encoding: auto or zset")
    enc = "packed" if encoding != "zset" and scan.integers and scan.rows else "zset"
    sizes = shard_sizes(scan.histogram, n)
    if attr_chunk < 1:
        raise StoreError(f"attr_chunk must be at least 1, got {attr_chunk}")
    scanned = time.monotonic()
    source = _fingerprint(path, attrs)

    old = read_layout(redis, plan_id, run_id)
    if (old and old.get("state") == "complete" and old.get("format") == FORMAT and old.get("source") == source
            and old.get("shards") == n and old.get("attr_chunk") == attr_chunk and old.get("encoding") == enc
            and old.get("sizes") == sizes
            and _stored_sizes(redis, plan_id, run_id, n, enc) == sizes):
        log.info("run %s / %s already holds this staging file (%s users, %s shards, %s): not rewritten",
                 plan_id, run_id, scan.rows, n, enc)
        return LoadResult(dict(zip(range(1, n + 1), sizes, strict=True)), enc, n, reused=True,
                          scan_seconds=scanned - started)
    if old:
        drop_run(redis, plan_id, run_id, n)

    mkey = meta_key(plan_id, run_id)
    meta = {"format": FORMAT, "state": "loading", "encoding": enc, "shards": n, "source": source,
            "members": scan.rows, "max_shard_members": max_shard_members, "ttl_seconds": ttl_seconds,
            "sizes": json.dumps(sizes), "attrs": json.dumps(attrs), "attr_chunk": attr_chunk}
    pipe = redis.pipeline(transaction=False)
    pipe.hset(mkey, mapping=meta)
    pipe.expire(mkey, ttl_seconds)
    pipe.execute()

    with CommandStream(redis) as stream:
        written = _write(stream, path, plan_id, run_id, n, enc, sizes, attrs, attr_chunk, ttl_seconds, batch_rows)
        stream.finish()
    stored = _stored_sizes(redis, plan_id, run_id, n, enc)
    if stored != sizes or written != sizes:  # the staging file changed under us, or another writer interfered
        raise StoreError(f"run {plan_id} / {run_id}: shard sizes after loading {stored} differ from the "
                         f"scanned {sizes}; retry the load")
    redis.hset(mkey, mapping={"state": "complete", "loaded_at": f"{time.time():.3f}"})
    done = time.monotonic()
    return LoadResult(dict(zip(range(1, n + 1), sizes, strict=True)), enc, n, scan_seconds=scanned - started,
                      write_seconds=done - scanned)


def _write(stream: CommandStream, path: Any, plan_id: str, run_id: str, n: int, enc: str, sizes: list[int],
           attrs: list[str], chunk: int, ttl: int, batch_rows: int) -> list[int]:
    """Write every batch of the staging file; return the members written per shard.

    A member's position in its shard is the count of the shard's members written before it (batch
    after batch); the attribute chunks are cut by that same position.
    """
    import numpy as np

    keys = [ShardKeys(plan_id, run_id, s) for s in range(n + 1)]  # index 0 unused
    expiring: set[str] = set()

    def ensure_ttl(key: str) -> None:
        # Right after the key's first write, in the same connection: no key ever lives without TTL.
        if key not in expiring:
            expiring.add(key)
            stream.command(key, "EXPIRE", key, ttl)

    chunks = _AttrChunks(stream, keys, attrs, sizes, chunk, ttl, path) if attrs else None
    score_width = len(str(max(max(sizes, default=1) - 1, 0)))
    written = [0] * (n + 1)
    if enc == "packed":
        for s in range(1, n + 1):
            if sizes[s - 1]:
                # Size the string exactly once: appending would over-allocate up to 2x.
                key = keys[s].packed
                stream.command(key, "SETRANGE", key, sizes[s - 1] * packed.WIDTH - 1, b"\0")
                ensure_ttl(key)

    for batch in _batches(path, batch_rows, ["uid", *attrs]):
        uids = batch.column(0)
        # Every row's shard and position in it, for the attribute chunks.
        row_shard = np.zeros(len(uids), dtype=np.int64)
        row_pos = np.zeros(len(uids), dtype=np.int64)
        if enc == "packed":
            values = packed.canonical_ints(uids)
            if values is None:
                raise StoreError(f"{path} changed while loading: it now holds non-integer uids")
            shard = shard_of_hashes(murmur3_32_arrow(uids), n)
            order = np.argsort(shard.astype(np.int16), kind="stable")  # radix sort
            counts = np.bincount(shard, minlength=n + 1)
            ordered = values[order]
            positions = _positions(shard[order], counts, written)
            pos = 0
            for s in np.flatnonzero(counts).tolist():
                c = int(counts[s])
                key = keys[s].packed
                if written[s] + c > sizes[s - 1]:
                    raise StoreError(f"{path} changed while loading: shard {s} outgrew its scanned size")
                stream.command(key, "SETRANGE", key, written[s] * packed.WIDTH, packed.pack(ordered[pos:pos + c]))
                written[s] += c
                pos += c
            if chunks:
                row_shard[:] = shard
                row_pos[order] = positions
        else:
            for rows, length, mat in string_groups(uids):
                shard = shard_of_hashes(murmur3_32_matrix(mat), n)
                order = np.argsort(shard.astype(np.int16), kind="stable")  # radix sort
                counts = np.bincount(shard, minlength=n + 1)
                positions = _positions(shard[order], counts, written)  # the ZSET score: rank == position
                body = _zadd_members_resp(mat[order], length, positions, score_width)
                pos = 0
                for s in np.flatnonzero(counts).tolist():
                    c = int(counts[s])
                    key = keys[s].audience
                    kb = key.encode()
                    if written[s] + c > sizes[s - 1]:
                        raise StoreError(f"{path} changed while loading: shard {s} outgrew its scanned size")
                    for i in range(pos, pos + c, ZADD_CHUNK):
                        j = min(i + ZADD_CHUNK, pos + c)
                        head = b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%s\r\n" % (2 + 2 * (j - i), len(kb), kb)
                        stream.send(key, [head, memoryview(body[i:j]).cast("B")])
                    ensure_ttl(key)
                    written[s] += c
                    pos += c
                if chunks:
                    row_shard[rows] = shard
                    row_pos[rows[order]] = positions
        if chunks:
            chunks.add(batch, row_shard, row_pos)
    if chunks:
        chunks.check_complete()
    return written[1:]


def _positions(sorted_shards: Any, counts: Any, written: list[int]) -> Any:
    """Return the position in its shard of each row of a batch sorted by shard (stable): the
    shard's members written so far, plus the row's rank among the batch's rows of that shard."""
    import numpy as np

    starts = np.cumsum(counts) - counts  # first sorted row of each shard
    base = np.asarray(written, dtype=np.int64) - starts
    return np.arange(len(sorted_shards), dtype=np.int64) + base[sorted_shards]


def _zadd_members_resp(mat: Any, length: int, scores: Any, score_width: int) -> Any:
    """Return a ``(rows, width)`` uint8 matrix: row i is the RESP of ``<score i> <member i>`` for ZADD,
    the score as ``score_width`` zero-padded decimal digits (Redis parses "000042" as 42)."""
    import numpy as np

    head = b"$%d\r\n" % score_width
    middle = b"\r\n$%d\r\n" % length
    width = len(head) + score_width + len(middle) + length + 2
    out = np.empty((mat.shape[0], width), dtype=np.uint8)
    out[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
    at = len(head)
    powers = 10 ** np.arange(score_width - 1, -1, -1, dtype=np.int64)
    out[:, at:at + score_width] = (scores[:, None] // powers) % 10 + 48
    at += score_width
    out[:, at:at + len(middle)] = np.frombuffer(middle, dtype=np.uint8)
    at += len(middle)
    out[:, at:at + length] = mat
    out[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
    return out


class _AttrChunks:
    """Gather each shard's attribute values by position and SET a chunk once all its members are in.

    Chunk ``c`` of a shard holds positions ``[c*C, min((c+1)*C, size))``; a batch brings each shard
    the next run of positions, so a chunk fills across batches and is written whole (a string sized
    once, with its TTL). At most one unfinished chunk per shard is held in memory.
    """

    def __init__(self, stream: CommandStream, keys: list[ShardKeys], attrs: list[str], sizes: list[int],
                 chunk: int, ttl: int, path: Any) -> None:
        self.stream = stream
        self.keys = keys
        self.attrs = attrs
        self.sizes = sizes
        self.chunk = chunk
        self.ttl = ttl
        self.path = path
        self.filled = [0] * len(keys)  # per shard: positions whose values are held or written
        self.pending: dict[int, list[list[Any]]] = {}  # shard -> per column, pieces of "<json>," texts
        self.largest = 0

    def add(self, batch: Any, row_shard: Any, row_pos: Any) -> None:
        import numpy as np

        order = np.lexsort((row_pos, row_shard))
        shards = row_shard[order]
        columns = [_string_buffers(_json_values(batch.column(c)).take(order)) for c in self.attrs]
        bounds = np.flatnonzero(np.diff(shards)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(shards)]
        firsts = row_pos[order][starts].tolist() if len(shards) else []
        for i, j, first in zip(starts, ends, firsts, strict=True):
            s = int(shards[i])
            if first != self.filled[s]:  # cannot happen: positions are handed out in this order
                raise StoreError(f"{self.path}: shard {s} attribute rows out of order at position {first}")
            self._take(s, columns, i, j)

    def _take(self, s: int, columns: list[tuple[Any, Any]], i: int, j: int) -> None:
        size = self.sizes[s - 1]
        while i < j:
            at = self.filled[s]
            end = min((at // self.chunk + 1) * self.chunk, size)
            if at >= size:
                raise StoreError(f"{self.path} changed while loading: shard {s} outgrew its scanned size")
            take = min(j - i, end - at)
            held = self.pending.setdefault(s, [[] for _ in self.attrs])
            for pieces, (offsets, data) in zip(held, columns, strict=True):
                pieces.append(memoryview(data)[offsets[i]:offsets[i + take]])
            self.filled[s] += take
            i += take
            if self.filled[s] == end:
                self._flush(s, at // self.chunk)

    def _flush(self, s: int, c: int) -> None:
        held = self.pending.pop(s)
        # Every value text ends with ",": drop the last one of each column.
        blob = b"[" + b",".join(b"[" + b"".join(pieces)[:-1] + b"]" for pieces in held) + b"]"
        if len(blob) > self.largest:
            if len(blob) > ATTR_CHUNK_WARN_BYTES >= self.largest:
                log.warning("attribute chunk %s is %s bytes (over 1 MB): lower attr_chunk or drop attribute "
                            "columns the templates do not use", self.keys[s].attrs(c), len(blob))
            self.largest = len(blob)
        key = self.keys[s].attrs(c)
        self.stream.command(key, "SET", key, blob, "EX", self.ttl)

    def check_complete(self) -> None:
        short = [s for s in range(1, len(self.keys)) if self.filled[s] != self.sizes[s - 1]]
        if short or self.pending:
            raise StoreError(f"{self.path} changed while loading: the attributes of shard(s) {short} are incomplete")


def _json_values(col: Any) -> Any:
    """Return, per value of an Arrow column, its JSON text followed by ``,`` (an Arrow string array).

    The text is exactly ``json.dumps(value, default=str, ensure_ascii=False)``: built column-wise
    with Arrow compute for text, integer and boolean columns without control characters (the common
    case: nicknames, items, cities); otherwise value by value in Python (floats, times, decimals...).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    value = None
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
        if not pc.any(pc.match_substring_regex(col, "[\\x00-\\x1f]")).as_py():  # json.dumps escapes those
            text = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            value = pc.binary_join_element_wise('"', text, '"', "")
    elif pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        value = pc.cast(col, pa.string())  # 42, true/false: what json.dumps writes
    if value is None:
        value = pa.array([json.dumps(v, default=_json_default, ensure_ascii=False) for v in col.to_pylist()],
                         pa.string())
    return pc.binary_join_element_wise(pc.fill_null(value, "null"), ",", "")


def _string_buffers(arr: Any) -> tuple[Any, Any]:
    """Return the offsets (numpy, one per row and one more, from 0) and the data buffer of a string array."""
    import numpy as np

    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    _validity, offsets_buf, data = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    return offsets, data if data is not None else b""


def _batches(path: Any, batch_rows: int, columns: list[str]) -> Iterator[Any]:
    """Yield the staging file's batches; a failure to read them is a StorageError naming ``path``."""
    import pyarrow.parquet as pq

    from c2b import storage

    with storage.arrow_source(path) as source:
        with storage.guard("reading", path):
            it = pq.ParquetFile(source).iter_batches(batch_size=batch_rows, columns=columns)
        while True:
            with storage.guard("reading", path):
                batch = next(it, None)
            if batch is None:
                return
            yield batch


def read_page(redis: Any, keys: ShardKeys, start: int, page_size: int) -> list[str]:
    """Return up to ``page_size`` uids of the shard from position ``start`` (the cursor).

    One round trip whatever the encoding: the shard's packed and ZSET keys share a hash tag (one
    slot, one node), so both reads go in one pipeline and the one that exists answers.
    """
    if page_size < 1 or start < 0:
        return []
    first, last = packed.byte_range(start, page_size)
    pipe = redis.pipeline(transaction=False)
    pipe.getrange(keys.packed, first, last)
    pipe.zrange(keys.audience, start, start + page_size - 1)
    raw, members = pipe.execute()
    if raw:
        return packed.unpack(raw)
    return [_text(m) for m in members]


def read_attrs(redis: Any, keys: ShardKeys, start: int, count: int,
               layout: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Return the template attributes of the shard's members at ranks ``start .. start+count-1``
    (the uids ``read_page(redis, keys, start, count)`` returns), one dict each.

    ``layout`` is the run's meta (:func:`read_layout`); one MGET of the chunks the range spans.
    """
    return AttrReader(redis, keys, layout).page(start, count)


class AttrReader:
    """Read one shard's template attributes by position (a page) or by uid (the deferred pass).

    Raises :class:`StoreError` when the run's meta is missing, not complete, of another format, or
    a chunk it names is missing or malformed: missing state is an error, never "no attributes".
    A chunk is read and decoded once for the pages that share it; a page builds the dicts of its own rows.
    """

    KEEP = 4  # chunks kept for pages: a page spans one or two, and the next page starts in the last

    def __init__(self, redis: Any, keys: ShardKeys, layout: dict[str, Any] | None) -> None:
        where = f"run {keys.plan_id} / {keys.run_id}"
        if not layout:
            raise StoreError(f"{where} has no meta key (never loaded, cleaned up or expired): load it again")
        if layout.get("format") != FORMAT:
            raise StoreError(f"{where} was loaded with store format {layout.get('format')!r}, this code reads "
                             f"format {FORMAT!r} (attributes in position chunks): load the run again")
        if layout.get("state") != "complete":
            raise StoreError(f"{where}: load state is {layout.get('state')!r}, not 'complete'")
        self.redis = redis
        self.keys = keys
        self.columns: list[str] = list(layout.get("attrs") or [])
        self.chunk = int(layout.get("attr_chunk") or 0)
        if self.columns and self.chunk < 1:
            raise StoreError(f"{where}: the meta names attributes {self.columns} but no attr_chunk")
        sizes = layout.get("sizes") or []
        self.size = int(sizes[keys.shard - 1]) if 0 < keys.shard <= len(sizes) else 0
        self.encoding = layout.get("encoding")
        self._row = _row_builder(self.columns)
        self._recent: dict[int, list[list[Any]]] = {}  # chunk -> columns, the last pages' (main pass)
        self._kept: dict[int, list[list[Any]]] = {}  # chunk -> columns, every chunk read by uid
        self._ranks: dict[str, int] | None = None

    def page(self, start: int, count: int) -> list[dict[str, Any]]:
        """Return the attributes of the members at ranks ``start .. start+count-1`` (fewer past the end)."""
        stop = min(start + count, self.size)
        if stop <= start:
            return []
        if not self.columns:
            return [{} for _ in range(stop - start)]
        chunks = list(range(start // self.chunk, (stop - 1) // self.chunk + 1))
        self._fetch(chunks, self._recent)
        rows: list[dict[str, Any]] = []
        for c in chunks:
            a, b = max(start - c * self.chunk, 0), min(stop - c * self.chunk, self.chunk)
            rows += map(self._row, *(col[a:b] for col in self._recent[c]))
        while len(self._recent) > max(self.KEEP, len(chunks)):  # oldest first (insertion order)
            del self._recent[next(iter(self._recent))]
        return rows

    def by_uid(self, uids: Sequence[str]) -> list[dict[str, Any]]:
        """Return the attributes of ``uids`` in any order (an empty dict for a uid not in the shard:
        e.g. a deferred entry of an earlier load of the run, whose users changed).

        The chunks read here are kept (O(shard) once: deferred users are spread over the whole shard)."""
        if not self.columns:
            return [{} for _ in uids]
        ranks = self._rank_of(uids)
        self._fetch(sorted({r // self.chunk for r in ranks if r is not None}), self._kept)
        kept, size, row = self._kept, self.chunk, self._row
        return [{} if r is None else row(*(col[r % size] for col in kept[r // size])) for r in ranks]

    def _fetch(self, chunks: list[int], into: dict[int, list[list[Any]]]) -> None:
        """Read and decode the ``chunks`` not in ``into`` yet: one MGET a 64 (~700 KB of nicknames)."""
        todo = [c for c in chunks if c not in into]
        for i in range(0, len(todo), 64):
            part = todo[i:i + 64]
            raw = self.redis.mget([self.keys.attrs(c) for c in part])
            into.update({c: self._decode(c, r) for c, r in zip(part, raw, strict=True)})

    def _decode(self, c: int, raw: bytes | None) -> list[list[Any]]:
        """Return chunk ``c``'s columns (one list of values per attribute)."""
        key = self.keys.attrs(c)
        if raw is None:
            raise StoreError(f"{key} is missing: the run's attributes are gone (expired or dropped); load it again")
        want = min(self.chunk, self.size - c * self.chunk)
        try:
            columns = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{key} is not an attribute chunk: {exc}") from exc
        if (not isinstance(columns, list) or len(columns) != len(self.columns)
                or any(not isinstance(col, list) or len(col) != want for col in columns)):
            raise StoreError(f"{key} does not hold {want} rows of {self.columns}")
        return columns

    def _rank_of(self, uids: Sequence[str]) -> list[int | None]:
        if self.encoding == "zset":  # the score is the position
            scores = self.redis.zmscore(self.keys.audience, list(uids)) if uids else []
            return [None if s is None else int(s) for s in scores]
        if self._ranks is None:  # packed: read the shard once (8 bytes a member) and index it
            raw = self.redis.get(self.keys.packed) or b""
            members = packed.unpack(raw)
            if len(members) != self.size:
                raise StoreError(f"{self.keys.packed} holds {len(members)} members, the meta says {self.size}")
            self._ranks = {uid: i for i, uid in enumerate(members)}
        ranks = self._ranks
        return [ranks.get(uid) for uid in uids]


def _row_builder(columns: list[str]) -> Callable[..., dict[str, Any]]:
    """Return ``f(v0, v1, ...) -> {columns[0]: v0, columns[1]: v1, ...}``.

    A dict display compiled for the columns: about twice as fast as ``dict(zip(columns, row))``,
    and the per-member cost of a page. The names are bound as values, never written into the source.
    """
    args = [f"v{i}" for i in range(len(columns))]
    names = [f"k{i}" for i in range(len(columns))]
    body = ", ".join(f"{k}: {v}" for k, v in zip(names, args, strict=True))
    source = f"def make({', '.join(names)}):\n    return lambda {', '.join(args)}: {{{body}}}\n"
    scope: dict[str, Any] = {}
    exec(source, scope)  # noqa: S102 (only generated identifiers; the column names are arguments)
    return scope["make"](*columns)  # type: ignore[no-any-return]


def drop_run(redis: Any, plan_id: str, run_id: str, shards: int | None = None) -> int:
    """Delete a run's meta, audience, attribute and checkpoint keys; return how many existed.

    Covers every shard the run's meta records (``shards: auto`` may have chosen another count than
    the caller knows) and at least ``shards``. UNLINK frees the memory off Redis' main thread.
    """
    layout = read_layout(redis, plan_id, run_id)
    count = max(shards or 0, int(layout["shards"]) if layout else 0)
    names = [meta_key(plan_id, run_id)]
    for s in range(1, count + 1):
        names += _run_keys(ShardKeys(plan_id, run_id, s), layout)
    if layout is None:  # no meta to say how many attribute chunks: find them (rare: meta expired first)
        names += sorted({_text(k) for k in redis.scan_iter(match=_attrs_pattern(plan_id, run_id), count=1000)})
    pipe = redis.pipeline(transaction=False)
    for key in names:
        pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


def _run_keys(keys: ShardKeys, layout: dict[str, Any] | None) -> list[str]:
    """The run-scoped keys of one shard by the run's meta (format 2 attribute hashes too, for cleanup)."""
    legacy = keys.legacy_attr_keys(int(layout["attr_parts"])) if layout and "attr_parts" in layout else []
    return [*keys.run_scoped(attr_chunk_count(layout, keys.shard)), *legacy]


def _attrs_pattern(plan_id: str, run_id: str) -> str:
    """A SCAN pattern for every attribute key of every shard of a run."""
    return shard_key_pattern(plan_id, run_id, "attrs:*")


def shard_key_pattern(plan_id: str, run_id: str, suffix: str) -> str:
    """A SCAN pattern for the keys ``c2b:{<plan>:<run>:<any shard>}:<suffix>`` (``suffix`` may hold globs).

    It can also match a run whose id starts with ``<run>:``: callers check the shard part
    (:func:`shard_of_key`)."""
    def glob(text: str) -> str:
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in _tag_part(text))

    return "c2b:{" + f"{glob(plan_id)}:{glob(run_id)}:" + "*}:" + suffix


def shard_of_key(plan_id: str, run_id: str, key: str) -> int | None:
    """The shard of a key of the run (``c2b:{<plan>:<run>:<shard>}:...``), else ``None``."""
    prefix = "c2b:{" + f"{_tag_part(plan_id)}:{_tag_part(run_id)}:"
    if not key.startswith(prefix):
        return None
    shard = key[len(prefix):].partition("}")[0]
    return int(shard) if shard.isdigit() else None


# -- inspection (c2b store-check) --------------------------------------------------------

@dataclass
class KeyInfo:
    key: str
    kind: str
    members: int
    bytes: int
    ttl: int  # seconds; -1 = no TTL, -2 = missing


@dataclass
class RunCheck:
    plan_id: str
    run_id: str
    layout: dict[str, Any] | None
    keys: list[KeyInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def largest_by_bytes(self) -> KeyInfo | None:
        return max(self.keys, key=lambda k: k.bytes, default=None)

    @property
    def largest_by_members(self) -> KeyInfo | None:
        return max(self.keys, key=lambda k: k.members, default=None)

    def to_dict(self) -> dict[str, Any]:
        def info(k: KeyInfo | None) -> dict[str, Any] | None:
            return None if k is None else vars(k).copy()

        return {"plan": self.plan_id, "run": self.run_id, "layout": self.layout, "keys": len(self.keys),
                "bytes": sum(k.bytes for k in self.keys), "largest_by_bytes": info(self.largest_by_bytes),
                "largest_by_members": info(self.largest_by_members), "problems": self.problems}


_MEMBERS = {"string": "strlen", "zset": "zcard", "hash": "hlen", "list": "llen", "set": "scard"}


def inspect_run(redis: Any, plan_id: str, run_id: str, shards: int | None = None) -> RunCheck:
    """Measure every key of a run (type, members, MEMORY USAGE, TTL) and list what is wrong."""
    layout = read_layout(redis, plan_id, run_id)
    check = RunCheck(plan_id, run_id, layout)
    count = max(shards or 0, int(layout["shards"]) if layout else 0)
    if layout is None:
        check.problems.append("no meta key: the run was never loaded, was cleaned up, or expired")
    elif layout.get("state") != "complete":
        check.problems.append(f"load state is {layout.get('state')!r}, not 'complete'")
    names = [meta_key(plan_id, run_id)]
    chunk_rows: dict[str, int] = {}  # attribute chunk -> members it holds
    for s in range(1, count + 1):
        k = ShardKeys(plan_id, run_id, s)
        names += [*_run_keys(k, layout), k.ledger]
        size = int(layout["sizes"][s - 1]) if layout and s <= len(layout.get("sizes") or []) else 0
        for c in range(attr_chunk_count(layout, s)):
            chunk_rows[k.attrs(c)] = min(int(layout["attr_chunk"]), size - c * int(layout["attr_chunk"]))  # type: ignore[index]
    pipe = redis.pipeline(transaction=False)
    for key in names:
        pipe.type(key)
        pipe.ttl(key)
    answers = pipe.execute()
    present = [(key, _text(answers[2 * i]), int(answers[2 * i + 1])) for i, key in enumerate(names)
               if _text(answers[2 * i]) != "none"]
    found = {key for key, _, _ in present}
    lost = [key for key in chunk_rows if key not in found]
    if lost:
        check.problems.append(f"{len(lost)} attribute chunk(s) missing, e.g. {lost[0]}")
    pipe = redis.pipeline(transaction=False)
    for key, kind, _ in present:
        getattr(pipe, _MEMBERS.get(kind, "exists"))(key)
        pipe.memory_usage(key, samples=0)
    sized = pipe.execute()
    bound = int(layout.get("max_shard_members", 0)) if layout else 0
    for i, (key, kind, ttl) in enumerate(present):
        members = int(sized[2 * i])
        if key.endswith(":pk"):
            members //= packed.WIDTH
        elif key in chunk_rows:  # a string of JSON: its members are the rows it holds
            members = chunk_rows[key]
        info = KeyInfo(key, kind, members, int(sized[2 * i + 1] or 0), ttl)
        check.keys.append(info)
        if ttl < 0:
            check.problems.append(f"{key} has no TTL")
        if bound and members > bound and not key.endswith(":meta"):
            check.problems.append(f"{key} holds {members:,} members, above max_shard_members {bound:,}")
    return check
