"""The channel registry is the one home of channel names, default connections and needs."""

from __future__ import annotations

import pytest
from c2b.channels import CHANNEL_NAMES, REGISTRY
from c2b.plan.model import Touch


def test_plan_accepts_exactly_the_registered_channels() -> None:
    enum = Touch.model_json_schema()["properties"]["channel"]["enum"]
    assert tuple(enum) == CHANNEL_NAMES


@pytest.mark.parametrize("name", CHANNEL_NAMES)
def test_touch_connection_defaults_come_from_the_channel_class(name: str) -> None:
    cls = REGISTRY[name]
    if cls.needs_connection and cls.default_connection is None:
        pytest.fail(f"{name}: needs a connection but has no default")
    touch = Touch(name="t", channel=name, template="hi")
    assert touch.connection == cls.default_connection


def test_batch_support_follows_max_batch() -> None:
    assert REGISTRY["outbox"].supports_batches() and REGISTRY["sms"].supports_batches()
    assert all(cls.supports_batches() == (cls.max_batch > 1) for cls in REGISTRY.values())
