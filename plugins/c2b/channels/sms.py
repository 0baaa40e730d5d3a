"""The ``sms`` channel: text messages through the SMS gateway (HTTP JSON).

Adds ``to`` (the uid; the gateway resolves the phone number, so no phone numbers pass through
Redis or logs), ``text`` and ``sign`` (the sender signature, connection extra ``sign``).
"""

from __future__ import annotations

from typing import Any

from c2b.channels.base import Message
from c2b.channels.http import HttpJsonChannel


class SmsChannel(HttpJsonChannel):
    name = "sms"
    default_connection = "c2b_sms"
    max_text_chars = 500  # an SMS: ~7 concatenated 70-character segments

    def fields(self, message: Message) -> dict[str, Any]:
        return {"to": message.uid, "text": message.text, "sign": self.config.extra.get("sign", "")}
