"""The compact shard encoding for integer uids: one Redis STRING of fixed-width int64 members.

A ZSET costs ~105 bytes per member (skiplist node, dict entry, the member as its own allocation).
Integer uids need none of that: member ``i`` of a packed shard is the 8 bytes at offset ``8 * i``
(little-endian signed int64), so

- memory is ~8.5 bytes per member (the string is sized once, exactly, before it is filled);
- a page is one ``GETRANGE key 8*start 8*(start+size)-1``: O(page), the cursor is the position;
- loading is ``SETRANGE key 8*offset <bytes>`` per shard per batch: writing the same staging file
  again writes the same bytes at the same places, so a retried load is idempotent.

Only *canonical* integers qualify (``str(int(s)) == s``, within int64): "007" or "-0" would come back
as "7" or "0", so a segment holding such uids stays on the ZSET encoding.
"""

from __future__ import annotations

from typing import Any

WIDTH = 8  # bytes per member: little-endian int64
DTYPE = "<i8"


def canonical_ints(uids: Any) -> Any | None:
    """Return the uids of an Arrow string array as numpy int64, or None unless all are canonical.

    Canonical: the decimal text Python's ``str(int)`` would write (no sign but a leading minus, no
    leading zeros, no ``-0``), within int64.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if uids.null_count:
        return None
    if len(uids) == 0:
        import numpy as np

        return np.zeros(0, dtype=DTYPE)
    try:
        ints = pc.cast(uids, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(ints, uids.type), uids)).as_py():
        return None
    return ints.to_numpy(zero_copy_only=False).astype(DTYPE, copy=False)


def first_non_canonical(uids: Any) -> str | None:
    """Return one uid that is not a canonical integer (for the error message), or None."""
    for value in uids.to_pylist():
        if value is None:
            return "null"
        try:
            if str(int(value)) == value and -(2**63) <= int(value) < 2**63:
                continue
        except ValueError:
            pass
        return str(value)
    return None


def pack(values: Any) -> bytes:
    """Return the packed bytes of an int64 numpy array."""
    return values.astype(DTYPE, copy=False).tobytes()


def unpack(raw: bytes) -> list[str]:
    """Return the uids (as text) packed in ``raw``; a trailing partial member is ignored."""
    import numpy as np

    usable = len(raw) - len(raw) % WIDTH
    return [str(v) for v in np.frombuffer(raw, dtype=DTYPE, count=usable // WIDTH).tolist()]


def byte_range(start: int, count: int) -> tuple[int, int]:
    """Return the inclusive GETRANGE bounds of members ``start .. start+count-1``."""
    return start * WIDTH, (start + count) * WIDTH - 1
