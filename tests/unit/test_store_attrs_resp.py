"""The loader's column-wise attribute encoding writes exactly what the row-by-row path writes.

``_attr_resp_arrow`` builds, per row, the RESP of ``<uid> <json>`` with Arrow compute; the JSON must
be byte for byte ``json.dumps({...}, ensure_ascii=False)`` (what readers and the row path use), and
anything it cannot encode that way (control characters, floats, times) must go to the row path.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest
from c2b.store.shards import _attr_resp_arrow, _string_buffers

ALPHABET = ["a", "é", '"', "\\", "中", "x", " ", "/", "\u2028", "😀", "{", "}", ":"]


def _rows(data: bytes, offsets: np.ndarray) -> list[bytes]:
    return [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]


def _resp(*parts: bytes) -> bytes:
    return b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_column_wise_json_is_byte_identical_to_json_dumps() -> None:
    rng = random.Random(7)
    n = 3000
    nick = [None if i % 97 == 0 else "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
            for i in range(n)]
    num = [None if i % 89 == 0 else rng.randint(-10**15, 10**15) for i in range(n)]
    flag = [None if i % 83 == 0 else bool(i % 2) for i in range(n)]
    city = pa.array([rng.choice(["Shanghai", "Xi'an", None]) for _ in range(n)]).dictionary_encode()
    uids = [str(10**9 + i) for i in range(n)]
    batch = pa.record_batch({"uid": uids, "nickname": nick, "n": pa.array(num, pa.int64()), "ok": flag,
                             "city": city})
    resp = _attr_resp_arrow(batch, ["nickname", "n", "ok", "city"])
    assert resp is not None
    order = np.arange(n)[::-1]  # as the loader does: rows taken in shard order, then sliced
    offsets, data = _string_buffers(resp.take(order))
    got = _rows(bytes(data), offsets)
    cities = city.to_pylist()
    for k, i in enumerate(order):
        doc = json.dumps({"nickname": nick[i], "n": num[i], "ok": flag[i], "city": cities[i]}, ensure_ascii=False)
        assert got[k] == _resp(uids[i].encode(), doc.encode()), (i, got[k])


@pytest.mark.parametrize("column", [pa.array(["a\nb"]), pa.array(["tab\there"]), pa.array([1.5]),
                                    pa.array([None], pa.timestamp("s"))])
def test_what_json_dumps_would_write_otherwise_goes_row_by_row(column: pa.Array) -> None:
    assert _attr_resp_arrow(pa.record_batch({"uid": ["1"], "x": column}), ["x"]) is None
