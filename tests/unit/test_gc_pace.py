"""The delivery's garbage-collector pace: set while delivering, restored after, even on an error."""

from __future__ import annotations

import gc

import pytest
from c2b.delivery.gc_pace import delivery_gc_pace


def test_young_threshold_is_raised_inside_and_restored_after() -> None:
    before = gc.get_threshold()
    alive = [object() for _ in range(10)]  # tracked containers would be frozen; plain objects are not
    with delivery_gc_pace(12_345):
        assert gc.get_threshold() == (12_345, *before[1:])
        assert gc.get_freeze_count() > 0  # what lived before is out of the collections meanwhile
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert len(alive) == 10


def test_restored_when_the_delivery_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), delivery_gc_pace():
        raise RuntimeError("shard failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_while_delivering_are_still_collected() -> None:
    class Node:
        pass

    with delivery_gc_pace(100):
        import weakref

        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        gone = weakref.ref(a)
        del a, b
        for _ in range(10):
            [[] for _ in range(200)]  # allocations past the young threshold start a collection
        assert gone() is None
