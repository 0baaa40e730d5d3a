"""The sharded Redis audience store: one key per shard instead of one big key per plan.

Key layout of one run (``{...}`` is a Redis Cluster hash tag: all keys of one shard share a slot,
while different shards hash to different slots and so spread over the cluster's nodes)::

    c2b:{<plan>:<run>}:meta             HASH    the run's layout: encoding, shard count, sizes, state
    c2b:{<plan>:<run>:<shard>}:pk       STRING  packed encoding: uids as little-endian int64, 8 bytes each
    c2b:{<plan>:<run>:<shard>}:aud      ZSET    zset encoding: uids with score 0, paged by rank
    c2b:{<plan>:<run>:<shard>}:attrs:<j> HASH   uid -> JSON of template attributes (only if used),
                                                split in ``attr_parts`` sub-keys j = 0 .. S-1
    c2b:{<plan>:<run>:<shard>}:ckpt     HASH    delivery checkpoint (next page start)
    c2b:{<plan>:<run>:<shard>}:rcpt     HASH    answer of the ledger's last decision (replay guard)
    c2b:{<plan>:<run>:<shard>}:ledger   HASH    "<touch>|<uid>" -> p (pending) | d (deferred): not final yet
    c2b:{<plan>:<run>:<shard>}:out:<b>  STRING  final outcomes as per-uid records (c2b.delivery.ledger)

A shard holds its uids in exactly one of ``pk`` / ``aud``: ``packed`` when every uid of the run is a
canonical integer (~8.5 bytes per member, see :mod:`c2b.store.packed`), ``zset`` otherwise (~105 bytes).
The meta key records which, so readers and ``c2b store-check`` know the layout.

The attributes of a shard are split over ``S`` sub-keys (``attr_parts`` in the meta, a power of two
chosen at load time from the largest shard so a sub-key averages at most ``ATTR_PART_FIELDS``
fields): a uid's sub-key is ``(abs(h) >> 10) & (S - 1)`` with ``h`` the murmur3 hash that picks its
shard (``abs(h) & (N - 1)``, N <= 1024), so the bits are independent of the shard and the sub-keys
of a shard are even. They share the shard's hash tag (one slot), so a page's attributes are one
pipelined HMGET per sub-key it touches, on one node.

Every key carries a TTL (the plan's ``delivery.key_ttl_hours``), set when the key is created, so an
abandoned run cleans itself up. ``cleanup`` drops the meta, audience, attribute, checkpoint and receipt keys;
the ledger keeps its own, longer TTL because it is the record of what was sent (a cleared and re-run
DAG run consults it and sends nothing twice).

No big keys: before writing, the loader hashes every uid once to get the exact size of every shard
for every allowed shard count (:mod:`c2b.store.sizing`) and refuses a count that would put more than
``delivery.max_shard_members`` users into one key, naming the count to use (``shards: auto`` picks it).

Paging: a shard's members have a fixed order (insertion order for ``packed``, byte order for
``zset``), so a cursor is a plain position; a retried delivery resumes from its checkpoint. A load
of the same staging file again is a no-op; a load of a *different* staging file for the same run
drops the run's keys (checkpoints included: positions changed) and writes afresh.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from c2b.hashing import MAX_SHARDS, murmur3_32_arrow, murmur3_32_matrix, shard_of_hashes, string_groups
from c2b.store import packed
from c2b.store.redis_stream import CommandStream
from c2b.store.sizing import choose_shard_count, shard_sizes

log = logging.getLogger(__name__)

FORMAT = "2"  # bump when the layout changes in a way old readers cannot follow
ZADD_CHUNK = 1000  # members per ZADD: big enough to amortise round trips, small enough not to block
ATTR_CHUNK = 500  # fields per HSET
ATTR_PART_FIELDS = 3000  # average fields per attrs sub-key: the largest stays far below 4,000 (~ +4 sigma = 3,220)
ATTR_PART_SHIFT = 10  # the shard takes the low bits of abs(h) (MAX_SHARDS = 1024); the sub-key the next ones
MAX_ATTR_PARTS = 1 << 21  # abs(h) < 2**31 leaves 21 bits above the shard's 10
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

    @property
    def tag(self) -> str:
        return "{" + f"{_tag_part(self.plan_id)}:{_tag_part(self.run_id)}:{self.shard}" + "}"

    @property
    def audience(self) -> str:
        """The ZSET of the shard's uids (``zset`` encoding)."""
        return f"c2b:{self.tag}:aud"

    @property
    def packed(self) -> str:
        """The STRING of the shard's uids as int64 (``packed`` encoding)."""
        return f"c2b:{self.tag}:pk"

    def attrs(self, part: int) -> str:
        """Sub-key ``part`` of the shard's attribute hash (see :func:`attr_part_of_hashes`)."""
        return f"c2b:{self.tag}:attrs:{part}"

    def attr_keys(self, parts: int) -> list[str]:
        """Every sub-key of the shard's attribute hash, for a run whose meta says ``attr_parts: parts``."""
        return [self.attrs(j) for j in range(parts)]

    @property
    def checkpoint(self) -> str:
        return f"c2b:{self.tag}:ckpt"

    @property
    def ledger(self) -> str:
        return f"c2b:{self.tag}:ledger"

    @property
    def receipts(self) -> str:
        return f"c2b:{self.tag}:rcpt"

    def run_scoped(self, attr_parts: int = 1) -> list[str]:
        """Keys that only live for the run (dropped by cleanup); ``attr_parts`` from the run's meta."""
        return [self.audience, self.packed, *self.attr_keys(attr_parts), self.checkpoint, self.receipts]


def attr_parts_for(largest_shard: int, part_fields: int = ATTR_PART_FIELDS) -> int:
    """Return S, the number of attrs sub-keys per shard: the smallest power of two with
    ``largest_shard / S <= part_fields``."""
    if part_fields < 1:
        raise StoreError(f"attr_part_fields must be at least 1, got {part_fields}")
    parts = 1
    while parts < MAX_ATTR_PARTS and largest_shard > parts * part_fields:
        parts <<= 1
    return parts


def attr_part_of_hashes(hashes: Any, parts: int) -> Any:
    """Return the attrs sub-key (0 .. parts-1) of numpy int32 murmur3 hashes: ``(abs(h) >> 10) & (parts - 1)``."""
    import numpy as np

    return ((np.abs(hashes.astype(np.int64)) >> ATTR_PART_SHIFT) & (parts - 1)).astype(np.int32)


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
    for name in ("shards", "members", "max_shard_members", "ttl_seconds", "attr_parts"):
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
                encoding: str = "auto", attr_part_fields: int = ATTR_PART_FIELDS) -> LoadResult:
    """Stream the staging Parquet into the run's shard keys; return members per shard.

    ``shards`` is a power of two or ``"auto"``; ``encoding`` is ``auto`` (packed when every uid is a
    canonical integer), ``packed`` or ``zset``. Raises :class:`~c2b.store.sizing.ShardCountError`
    (nothing written) when a shard would exceed ``max_shard_members``, and :class:`StoreError` when
    ``packed`` is forced on non-integer uids. Loading the same file again is a no-op.
    ``attr_part_fields``: average fields per attrs sub-key (:func:`attr_parts_for`; tests lower it).

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
    parts = attr_parts_for(max(sizes, default=0), attr_part_fields)
    scanned = time.monotonic()
    source = _fingerprint(path, attrs)

    old = read_layout(redis, plan_id, run_id)
    if (old and old.get("state") == "complete" and old.get("format") == FORMAT and old.get("source") == source
            and old.get("shards") == n and old.get("attr_parts") == parts and old.get("encoding") == enc
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
            "sizes": json.dumps(sizes), "attrs": json.dumps(attrs), "attr_parts": parts}
    pipe = redis.pipeline(transaction=False)
    pipe.hset(mkey, mapping=meta)
    pipe.expire(mkey, ttl_seconds)
    pipe.execute()

    with CommandStream(redis) as stream:
        written = _write(stream, path, plan_id, run_id, n, enc, sizes, attrs, parts, ttl_seconds, batch_rows)
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
           attrs: list[str], parts: int, ttl: int, batch_rows: int) -> list[int]:
    """Write every batch of the staging file; return the members written per shard."""
    import numpy as np

    keys = [ShardKeys(plan_id, run_id, s) for s in range(n + 1)]  # index 0 unused
    expiring: set[str] = set()

    def ensure_ttl(key: str) -> None:
        # Right after the key's first write, in the same connection: no key ever lives without TTL.
        if key not in expiring:
            expiring.add(key)
            stream.command(key, "EXPIRE", key, ttl)

    # attrs sub-key of index shard * parts + j (index < parts: shard 0, unused)
    attr_keys = [keys[t // parts].attrs(t % parts) if t >= parts else "" for t in range((n + 1) * parts)]
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
        hashes = murmur3_32_arrow(uids) if enc == "packed" or attrs else None  # once per batch, for both
        if enc == "packed":
            values = packed.canonical_ints(uids)
            if values is None:
                raise StoreError(f"{path} changed while loading: it now holds non-integer uids")
            shard = shard_of_hashes(hashes, n)
            order = np.argsort(shard.astype(np.int16), kind="stable")  # radix sort
            counts = np.bincount(shard, minlength=n + 1)
            ordered = values[order]
            pos = 0
            for s in np.flatnonzero(counts).tolist():
                c = int(counts[s])
                key = keys[s].packed
                if written[s] + c > sizes[s - 1]:
                    raise StoreError(f"{path} changed while loading: shard {s} outgrew its scanned size")
                stream.command(key, "SETRANGE", key, written[s] * packed.WIDTH, packed.pack(ordered[pos:pos + c]))
                written[s] += c
                pos += c
        else:
            for _rows, length, mat in string_groups(uids):
                shard = shard_of_hashes(murmur3_32_matrix(mat), n)
                order = np.argsort(shard.astype(np.int16), kind="stable")  # radix sort
                counts = np.bincount(shard, minlength=n + 1)
                body = _zadd_members_resp(mat[order], length)
                pos = 0
                for s in np.flatnonzero(counts).tolist():
                    c = int(counts[s])
                    key = keys[s].audience
                    kb = key.encode()
                    for i in range(pos, pos + c, ZADD_CHUNK):
                        j = min(i + ZADD_CHUNK, pos + c)
                        head = b"*%d\r\n$4\r\nZADD\r\n$%d\r\n%s\r\n" % (2 + 2 * (j - i), len(kb), kb)
                        stream.send(key, [head, memoryview(body[i:j]).cast("B")])
                    ensure_ttl(key)
                    written[s] += c
                    pos += c
        if attrs:
            # One index per (shard, sub-key): shard * parts + sub-key, so a sort groups both at once.
            target = shard_of_hashes(hashes, n) * parts + attr_part_of_hashes(hashes, parts)
            _write_attrs(stream, batch, target, attr_keys, attrs, ensure_ttl)
    return written[1:]


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


def _zadd_members_resp(mat: Any, length: int) -> Any:
    """Return a ``(rows, width)`` uint8 matrix: row i is the RESP of ``0 <member i>`` for ZADD."""
    import numpy as np

    prefix = b"$1\r\n0\r\n$%d\r\n" % length
    width = len(prefix) + length + 2
    out = np.empty((mat.shape[0], width), dtype=np.uint8)
    out[:, :len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[:, len(prefix):len(prefix) + length] = mat
    out[:, -2:] = np.frombuffer(b"\r\n", dtype=np.uint8)
    return out


def _write_attrs(stream: CommandStream, batch: Any, target: Any, keys: list[str], attrs: list[str],
                 ensure_ttl: Any) -> None:
    """HSET each row's attributes as JSON into its attrs sub-key ``keys[target[row]]``, ``ATTR_CHUNK``
    fields a command.

    The JSON of a row is exactly ``json.dumps({col: value}, ensure_ascii=False)``. Built column-wise
    with Arrow compute when every attribute column is text, integer or boolean and no text holds a
    control character (the common case: nicknames, items, cities); otherwise row by row in Python.
    """
    import numpy as np

    resp = _attr_resp_arrow(batch, attrs)
    if resp is None:
        _write_attrs_rows(stream, batch, target, keys, attrs, ensure_ttl)
        return
    order = np.argsort(target.astype(np.int16) if len(keys) <= 1 << 15 else target, kind="stable")  # radix sort
    counts = np.bincount(target, minlength=len(keys))
    resp = resp.take(order)
    offsets, data = _string_buffers(resp)
    view = memoryview(data)
    pos = 0
    for s in np.flatnonzero(counts).tolist():
        c = int(counts[s])
        key = keys[s]
        kb = key.encode()
        for i in range(pos, pos + c, ATTR_CHUNK):
            j = min(i + ATTR_CHUNK, pos + c)
            head = b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * (j - i), len(kb), kb)
            stream.send(key, [head, view[offsets[i]:offsets[j]]])
        ensure_ttl(key)
        pos += c


def _attr_resp_arrow(batch: Any, attrs: list[str]) -> Any:
    """Return, per row, the RESP of ``<uid> <json of its attributes>`` (an Arrow string array),
    or None when a column's type or content needs the row-by-row path."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def bulk(arr: Any) -> list[Any]:  # RESP bulk string: $<bytes>\r\n<arr>\r\n
        return ["$", pc.cast(pc.binary_length(arr), pa.string()), "\r\n", arr, "\r\n"]

    parts: list[Any] = ["{"]
    for i, c in enumerate(attrs):
        col = batch.column(c)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string())
            if pc.any(pc.match_substring_regex(col, "[\\x00-\\x1f]")).as_py():
                return None  # control characters: json.dumps escapes them as \uXXXX
            text = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            value = pc.binary_join_element_wise('"', text, '"', "")
        elif pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            value = pc.cast(col, pa.string())  # 42, true/false: what json.dumps writes
        else:
            return None  # floats, times, decimals...: json.dumps with str() as the fallback decides
        value = pc.fill_null(value, "null")
        parts += [(", " if i else "") + json.dumps(c, ensure_ascii=False) + ": ", value]
    parts.append("}")
    doc = pc.binary_join_element_wise(*parts, "")
    uid = pc.cast(batch.column(0), pa.string())
    return pc.binary_join_element_wise(*bulk(uid), *bulk(doc), "")


def _string_buffers(arr: Any) -> tuple[Any, Any]:
    """Return the offsets (numpy, one per row and one more, from 0) and the data buffer of a string array."""
    import numpy as np

    arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
    _validity, offsets_buf, data = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    return offsets, data if data is not None else b""


def _write_attrs_rows(stream: CommandStream, batch: Any, target: Any, keys: list[str], attrs: list[str],
                      ensure_ttl: Any) -> None:
    uids = batch.column(0).to_pylist()
    columns = {c: batch.column(c).to_pylist() for c in attrs}
    by_key: dict[int, list[int]] = {}
    for row, t in enumerate(target.tolist()):
        by_key.setdefault(t, []).append(row)
    for t, rows in by_key.items():
        key = keys[t]
        for i in range(0, len(rows), ATTR_CHUNK):
            args: list[Any] = ["HSET", key]
            for r in rows[i:i + ATTR_CHUNK]:
                args.append(uids[r])
                args.append(json.dumps({c: columns[c][r] for c in attrs}, default=_json_default, ensure_ascii=False))
            stream.command(key, *args)
        ensure_ttl(key)


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


def read_attrs(redis: Any, keys: ShardKeys, uids: list[str], parts: int) -> list[dict[str, Any]]:
    """Return the template attributes of ``uids`` (empty dicts when none were stored).

    ``parts`` is the run's ``attr_parts`` (:func:`read_layout`): one round trip, a pipelined HMGET
    per sub-key the uids fall in (all on the shard's slot).
    """
    if not uids:
        return []
    if parts == 1:
        raw = redis.hmget(keys.attrs(0), uids)
        return [json.loads(r) if r else {} for r in raw]
    import pyarrow as pa

    sub = attr_part_of_hashes(murmur3_32_arrow(pa.array(uids, pa.string())), parts).tolist()
    groups: dict[int, list[int]] = {}
    for i, j in enumerate(sub):
        groups.setdefault(j, []).append(i)
    pipe = redis.pipeline(transaction=False)
    for j, rows in groups.items():
        pipe.hmget(keys.attrs(j), [uids[i] for i in rows])
    out: list[dict[str, Any]] = [{}] * len(uids)
    for rows, raw in zip(groups.values(), pipe.execute(), strict=True):
        for i, r in zip(rows, raw, strict=True):
            if r:
                out[i] = json.loads(r)
    return out


def drop_run(redis: Any, plan_id: str, run_id: str, shards: int | None = None) -> int:
    """Delete a run's meta, audience, attribute and checkpoint keys; return how many existed.

    Covers every shard the run's meta records (``shards: auto`` may have chosen another count than
    the caller knows) and at least ``shards``. UNLINK frees the memory off Redis' main thread.
    """
    layout = read_layout(redis, plan_id, run_id)
    count = max(shards or 0, int(layout["shards"]) if layout else 0)
    parts = int(layout.get("attr_parts", 1)) if layout else 1
    pipe = redis.pipeline(transaction=False)
    pipe.unlink(meta_key(plan_id, run_id))
    for s in range(1, count + 1):
        for key in ShardKeys(plan_id, run_id, s).run_scoped(parts):
            pipe.unlink(key)
    return sum(int(n) for n in pipe.execute())


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
    for s in range(1, count + 1):
        k = ShardKeys(plan_id, run_id, s)
        names += [*k.run_scoped(int(layout.get("attr_parts", 1)) if layout else 1), k.ledger]
    pipe = redis.pipeline(transaction=False)
    for key in names:
        pipe.type(key)
        pipe.ttl(key)
    answers = pipe.execute()
    present = [(key, _text(answers[2 * i]), int(answers[2 * i + 1])) for i, key in enumerate(names)
               if _text(answers[2 * i]) != "none"]
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
        info = KeyInfo(key, kind, members, int(sized[2 * i + 1] or 0), ttl)
        check.keys.append(info)
        if ttl < 0:
            check.problems.append(f"{key} has no TTL")
        if bound and members > bound and not key.endswith(":meta"):
            check.problems.append(f"{key} holds {members:,} members, above max_shard_members {bound:,}")
    return check
