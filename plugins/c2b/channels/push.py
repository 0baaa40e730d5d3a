"""The ``push`` channel: app push notifications through the company's push gateway (HTTP JSON).

Adds ``to`` (the uid; the gateway maps it to devices), ``title`` (asset ``title``), ``body`` (the
rendered template), ``link`` and ``image`` (assets) to the common message envelope.
"""

from __future__ import annotations

from typing import Any

from c2b.channels.base import Message
from c2b.channels.http import HttpJsonChannel


class PushChannel(HttpJsonChannel):
    name = "push"
    default_connection = "c2b_push"
    max_text_chars = 1000  # a notification body (APNs/FCM payloads are a few KB in all)

    def fields(self, message: Message) -> dict[str, Any]:
        a = message.assets
        return {"to": message.uid, "title": a.get("title", ""), "body": message.text,
                "link": a.get("link"), "image": a.get("image")}
