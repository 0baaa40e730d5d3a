"""Delivery channels. A new channel is one small :class:`Channel` subclass registered here."""

from __future__ import annotations

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome
from c2b.channels.outbox import OutboxChannel
from c2b.channels.webhook import WebhookChannel

REGISTRY: dict[str, type[Channel]] = {c.name: c for c in (OutboxChannel, WebhookChannel)}


def make_channel(name: str, config: ChannelConfig) -> Channel:
    """Return a ready channel instance, or raise ``ValueError`` for a channel not built yet."""
    try:
        return REGISTRY[name](config)
    except KeyError:
        raise ValueError(f"channel {name!r} is not available; available: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["Channel", "ChannelConfig", "Message", "Outcome", "REGISTRY", "make_channel"]
