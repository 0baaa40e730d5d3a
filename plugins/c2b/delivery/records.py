"""Fixed-width uid records in Redis strings: the compact layout of the ledger's outcomes and of the
contact and re-entry histories.

A hash field costs ~60-70 bytes once a hash outgrows Redis' compact (listpack) encoding, whatever
it holds. A record costs its own bytes: the uid's 8-byte key followed by a fixed payload, appended
to one of many bucket strings (each a few KB, found by a Lua ``string.find`` on the key at a record
boundary). The uid key is exact for canonical int64 uids (the integer itself, little-endian) and an
8-byte BLAKE2b for any other uid: two uids of one bucket share a key with odds of ~n^2 / 2^65.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

from c2b.hashing import uid_bytes

KEY_WIDTH = 8

# Lua: the position (1-based) of the record of uid key ``k8`` in ``s`` of ``w``-byte records, or nil.
FIND = r"""
local function find_record(s, k8, w)
  local init = 1
  while true do
    local p = string.find(s, k8, init, true)
    if not p then return nil end
    if (p - 1) % w == 0 then return p end
    init = p + 1
  end
end
"""


@lru_cache(maxsize=1 << 16)  # a page asks for the same uid's key three times (states, records, prepare)
def uid_key(uid: str) -> bytes:
    """Return the 8-byte record key of ``uid`` (exact for canonical int64 uids, BLAKE2b otherwise)."""
    if uid[:1].isdigit() or uid[:1] == "-":
        try:
            v = int(uid)
        except ValueError:
            v = None
        if v is not None and -(1 << 63) <= v < (1 << 63) and str(v) == uid:
            return v.to_bytes(8, "little", signed=True)
    return hashlib.blake2b(uid_bytes(uid), digest_size=8).digest()


def uid_keys_arrow(uids: Any) -> list[bytes]:
    """Return :func:`uid_key` of every string of an Arrow array (vectorised when all are integers)."""
    from c2b.store import packed

    ints = packed.canonical_ints(uids)
    if ints is not None:
        raw = ints.tobytes()
        return [raw[i:i + KEY_WIDTH] for i in range(0, len(raw), KEY_WIDTH)]
    return [uid_key(u) for u in uids.to_pylist()]
