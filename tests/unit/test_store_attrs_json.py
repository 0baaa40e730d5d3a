"""The loader's column-wise attribute encoding writes exactly what ``json.dumps`` writes, value by value.

``_json_values`` builds, per value of a column, its JSON text followed by ``,`` (the attribute
chunks are these texts joined into one JSON array per column). The text must be byte for byte
``json.dumps(value, default=str, ensure_ascii=False)`` whether Arrow compute builds it (text,
integers, booleans) or Python does (control characters, floats, times, decimals...).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from c2b.store.shards import _json_values, _row_builder, _string_buffers

ALPHABET = ["a", "é", '"', "\\", "中", "x", " ", "/", "\u2028", "😀", "{", "}", ":", ","]


def _texts(arr: pa.Array) -> list[bytes]:
    offsets, data = _string_buffers(arr)
    data = bytes(data)
    return [data[offsets[k]:offsets[k + 1]] for k in range(len(offsets) - 1)]


def _want(values: list) -> list[bytes]:
    return [(json.dumps(v, default=str, ensure_ascii=False) + ",").encode() for v in values]


def test_column_wise_json_is_byte_identical_to_json_dumps() -> None:
    rng = random.Random(7)
    n = 3000
    nick = [None if i % 97 == 0 else "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 9)))
            for i in range(n)]
    num = [None if i % 89 == 0 else rng.randint(-10**15, 10**15) for i in range(n)]
    flag = [None if i % 83 == 0 else bool(i % 2) for i in range(n)]
    city = pa.array([rng.choice(["Shanghai", "Xi'an", None]) for _ in range(n)]).dictionary_encode()
    for col, values in [(pa.array(nick), nick), (pa.array(num, pa.int64()), num), (pa.array(flag), flag),
                        (city, city.to_pylist()), (pa.array(nick, pa.large_string()), nick)]:
        order = np.arange(n)[::-1]  # as the loader does: values taken in shard order, then sliced
        assert _texts(_json_values(col).take(order)) == _want([values[i] for i in order])


@pytest.mark.parametrize("column", [
    pa.array(["a\nb", "tab\there", None]),
    pa.array([1.5, float("inf"), None, -0.0, 1e300]),
    pa.array([dt.datetime(2026, 1, 2, 3, 4, 5), None], pa.timestamp("s")),
    pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)], pa.timestamp("us", "UTC")),
    pa.array([dt.date(2026, 11, 27)]),
    pa.array([decimal.Decimal("12.50")]),
    pa.array([[1, 2], None, []]),
])
def test_other_types_go_value_by_value_through_json_dumps(column: pa.Array) -> None:
    assert _texts(_json_values(column)) == _want(column.to_pylist())


def test_row_builder_makes_the_dicts_of_a_chunks_columns() -> None:
    names = ["nickname", "x y", "k0", "v1", "'); import os  #"]  # names are data, never code
    build = _row_builder(names)
    columns = [["a", "b"], [1, 2], [None, True], [0.5, "t"], ["p", "q"]]
    assert list(map(build, *columns)) == [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    assert list(map(_row_builder(["only"]), ["x"])) == [{"only": "x"}]
