"""The ``outbound_call`` channel: queue a call (robot or 1-to-1 customer service) at the call center.

Adds ``to`` (uid), ``script`` (the rendered template, what the agent or robot says), ``queue``
(connection extra ``queue``) and ``task`` (the offer, e.g. ``{"type": "cs_call"}``). The call
center must treat ``idempotency_key`` as the call task id: a re-send must not ring twice.
"""

from __future__ import annotations

from typing import Any

from c2b.channels.base import Message
from c2b.channels.http import HttpJsonChannel


class OutboundCallChannel(HttpJsonChannel):
    name = "outbound_call"
    default_connection = "c2b_call"
    max_text_chars = 2000  # the agent's call script

    def fields(self, message: Message) -> dict[str, Any]:
        return {"to": message.uid, "script": message.text, "queue": self.config.extra.get("queue", "default"),
                "task": message.offer or {}}
