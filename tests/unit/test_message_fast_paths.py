"""The per-message shortcuts give exactly what the plain code gave: keys, messages, outbox lines, variants."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from typing import Any

import pytest
from c2b.channels.base import ChannelConfig, Message, new_message
from c2b.channels.outbox import OutboxChannel
from c2b.delivery.work import idempotency_key, key_prefix
from c2b.hashing import VECTOR_MIN, VariantPicker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import Markup

ids = st.text(max_size=20)  # any code point, lone surrogates included


def _reference_key(plan: str, run: str, touch: str, uid: str) -> str:
    """The key as the delivery contract defines it (the code before the prefix hasher)."""
    return hashlib.sha256(f"{plan}\x1f{run}\x1f{touch}\x1f{uid}".encode("utf-8", "replace")).hexdigest()[:32]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=ids, run=ids, touch=ids, uid=ids)
def test_prefix_hasher_gives_the_contract_key(plan: str, run: str, touch: str, uid: str) -> None:
    h = key_prefix(plan, run, touch).copy()
    h.update(uid.encode("utf-8", "replace"))
    assert h.hexdigest()[:32] == _reference_key(plan, run, touch, uid) == idempotency_key(plan, run, touch, uid)


def test_key_values_do_not_change() -> None:
    # Pinned: the key is part of the delivery contract (gateways dedupe on it across releases).
    assert idempotency_key("e2e_outbox", "run1", "hello", "10000000") == "0814b3aafeabd3e75e7be3a524e66087"
    assert idempotency_key("p", "r", "t", "a\ud800z") == "38536481da42af8baa3a070bfd37e06b"


FIELDS = ("k", "p", "r", "t", "outbox", "u1", "a", "text")


def test_new_message_is_the_dataclass() -> None:
    args: tuple[Any, ...] = (*FIELDS, {"image": "x"}, {"type": "coupon"})
    m, ref = new_message(*args), Message(*args)
    assert m == ref and repr(m) == repr(ref) and m.to_json() == ref.to_json() and type(m) is Message
    assert vars(m) == vars(ref) and pickle.loads(pickle.dumps(m)) == ref
    assert dataclasses.replace(m, text="other") == dataclasses.replace(ref, text="other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.text = "x"  # type: ignore[misc]


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.tuples(st.text(max_size=30), ids), min_size=1, max_size=4),
       assets=st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
       offer=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_value, max_size=3)),
       markup=st.booleans())
def test_outbox_lines_are_json_dumps(tmp_path_factory: Any, texts: list[tuple[str, str]], assets: dict[str, str],
                                     offer: dict[str, Any] | None, markup: bool) -> None:
    ch = OutboxChannel(ChannelConfig(run_dir=str(tmp_path_factory.mktemp("outbox"))))
    try:
        msgs = [new_message(f"key{i}", "plan ü", "run\n1", "t\"1", "outbox", uid, "a",
                            Markup(text) if markup and i == 0 else text, assets, offer)
                for i, (text, uid) in enumerate(texts)]
        expected = [json.dumps(m.to_json(), ensure_ascii=False) + "\n" for m in msgs]
        for _ in range(2):  # the second time, assets/offer JSON comes from the cache
            assert [ch._line(m) for m in msgs] == expected
        assert [json.loads(ln) for ln in expected] == [json.loads(ch._line(m)) for m in msgs]
        writable = [m for m in msgs if m.uid.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == m.uid
                    and str(m.text).encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == m.text]
        ch.send_batch(writable)  # (a lone surrogate cannot be written as UTF-8, before as now)
        written = ch.path.read_text(encoding="utf-8") if ch.path.exists() else ""
        assert written == "".join(json.dumps(m.to_json(), ensure_ascii=False) + "\n" for m in writable)
    finally:
        ch.close()


def test_outbox_cache_follows_the_object() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ch = OutboxChannel(ChannelConfig(run_dir=d))
        first = {"a": "1"}
        assert ch._encoded(first) == '{"a": "1"}'
        second = {"a": "2"}  # another object: its own JSON even if the first's id were reused
        assert ch._encoded(second) == '{"a": "2"}' and ch._encoded(None) == "null"
        ch.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(weights=st.dictionaries(st.sampled_from(["a", "b", "c", "control"]), st.integers(0, 7), min_size=1)
       .filter(lambda w: sum(w.values()) > 0),
       salt=st.text(max_size=9), uids=st.lists(ids, max_size=3 * VECTOR_MIN))
def test_pick_page_is_pick_of_each_uid(weights: dict[str, int], salt: str, uids: list[str]) -> None:
    import mmh3

    picker = VariantPicker(salt, weights)
    got = picker.pick_page(uids)
    assert got == [picker.pick(u.encode("utf-8", "replace")) for u in uids]
    # ... and pick() is the documented formula (the single-variant shortcut included).
    total = sum(weights.values())
    for u, v in zip(uids[:20], got, strict=False):
        bucket = mmh3.hash(salt.encode("utf-8", "replace") + b":" + u.encode("utf-8", "replace"), 0, False) % total
        acc = 0
        for name in sorted(weights):
            acc += weights[name]
            if weights[name] and bucket < acc:
                assert v == name
                break


def test_pick_page_vectorised_with_lone_surrogates_and_one_variant() -> None:
    uids = ["a\ud800", "é中😀", ""] + [str(10_000_000 + i) for i in range(2 * VECTOR_MIN)]
    picker = VariantPicker("ab-1", {"a": 1, "b": 2, "c": 0, "d": 3})
    assert picker.pick_page(uids) == [picker.pick(u.encode("utf-8", "replace")) for u in uids]
    solo = VariantPicker("ab-1", {"a": 0, "b": 5, "c": 0})
    assert solo.pick_page(uids) == ["b"] * len(uids) == [solo.pick(u.encode()) for u in uids[3:]] + ["b"] * 3
