"""Delivery channels. A new channel is one small :class:`Channel` subclass registered here.

The registry is the single source of channel names and of what each channel needs: plan
validation (``c2b.plan.model``) and connection resolution (``c2b.airflow.resources``) read it.
"""

from __future__ import annotations

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome
from c2b.channels.inapp import InAppChannel
from c2b.channels.outbound_call import OutboundCallChannel
from c2b.channels.outbox import OutboxChannel
from c2b.channels.private_domain import PrivateDomainChannel
from c2b.channels.push import PushChannel
from c2b.channels.sms import SmsChannel
from c2b.channels.webhook import WebhookChannel

# In the order plan errors and the plan schema list them.
REGISTRY: dict[str, type[Channel]] = {c.name: c for c in (
    PushChannel, SmsChannel, InAppChannel, OutboundCallChannel, PrivateDomainChannel, WebhookChannel, OutboxChannel)}
CHANNEL_NAMES: tuple[str, ...] = tuple(REGISTRY)


def channel_class(name: str) -> type[Channel]:
    """Return the class of channel ``name``, or raise ``ValueError`` naming the available ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"channel {name!r} is not available; available: {', '.join(sorted(REGISTRY))}") from None


def make_channel(name: str, config: ChannelConfig) -> Channel:
    """Return a ready channel instance, or raise ``ValueError`` for an unknown channel."""
    return channel_class(name)(config)


__all__ = ["CHANNEL_NAMES", "REGISTRY", "Channel", "ChannelConfig", "Message", "Outcome", "channel_class",
           "make_channel"]
