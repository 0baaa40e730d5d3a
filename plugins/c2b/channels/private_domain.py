"""The ``private_domain`` channel: chat groups / enterprise messaging (e.g. a WeCom-style API).

Adds ``to`` (uid), ``text``, ``group`` (asset ``group``: send into that group instead of a 1-to-1
chat) and ``card`` (``link``/``image``/``title`` assets as a link card, when a link is given).
"""

from __future__ import annotations

from typing import Any

from c2b.channels.base import Message
from c2b.channels.http import HttpJsonChannel


class PrivateDomainChannel(HttpJsonChannel):
    name = "private_domain"
    default_connection = "c2b_private_domain"
    max_text_chars = 2000  # a WeChat text message is at most 2048 characters

    def fields(self, message: Message) -> dict[str, Any]:
        a = message.assets
        card = {k: a[k] for k in ("link", "image", "title") if k in a} if "link" in a else None
        return {"to": message.uid, "text": message.text, "group": a.get("group"), "card": card}
