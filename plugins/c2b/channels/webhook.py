"""The ``webhook`` channel: POST each message (or a batch) as JSON to any URL.

The body is the message envelope (``idempotency_key``, ``plan``, ``run``, ``touch``, ``uid``,
``variant``, ``text``, ``assets``, ``offer``); the ``Idempotency-Key`` header repeats the key.
"""

from __future__ import annotations

from c2b.channels.http import HttpJsonChannel


class WebhookChannel(HttpJsonChannel):
    name = "webhook"
    default_connection = "c2b_webhook"
