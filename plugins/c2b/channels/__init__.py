"""Delivery channels. A new channel is one small :class:`Channel` subclass registered here."""

from __future__ import annotations

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome
from c2b.channels.inapp import InAppChannel
from c2b.channels.outbound_call import OutboundCallChannel
from c2b.channels.outbox import OutboxChannel
from c2b.channels.private_domain import PrivateDomainChannel
from c2b.channels.push import PushChannel
from c2b.channels.sms import SmsChannel
from c2b.channels.webhook import WebhookChannel

REGISTRY: dict[str, type[Channel]] = {c.name: c for c in (
    PushChannel, SmsChannel, OutboundCallChannel, PrivateDomainChannel, InAppChannel, WebhookChannel, OutboxChannel)}


def make_channel(name: str, config: ChannelConfig) -> Channel:
    """Return a ready channel instance, or raise ``ValueError`` for an unknown channel."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"channel {name!r} is not available; available: {', '.join(sorted(REGISTRY))}") from None
    return cls(config)


__all__ = ["Channel", "ChannelConfig", "Message", "Outcome", "REGISTRY", "make_channel"]
