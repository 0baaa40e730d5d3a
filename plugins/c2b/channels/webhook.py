"""The ``webhook`` channel: POST each message as JSON to a URL from an Airflow Connection.

The ``Idempotency-Key`` header carries the message's key so the receiver can drop a re-send.
2xx is sent; 408, 429 and 5xx and network errors are transient (retry); other 4xx are permanent.
"""

from __future__ import annotations

import threading

import requests

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome

TRANSIENT = {408, 425, 429}


class WebhookChannel(Channel):
    name = "webhook"

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config)
        if not config.url:
            raise ValueError("webhook channel needs a URL (the Airflow Connection's host)")
        self.timeout = float(config.extra.get("timeout", 10))
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            if self.config.token:
                s.headers["Authorization"] = f"Bearer {self.config.token}"
            self._local.session = s
        return s

    def send(self, message: Message) -> Outcome:
        try:
            resp = self._session().post(self.config.url, json=message.to_json(), timeout=self.timeout,
                                        headers={"Idempotency-Key": message.idempotency_key})
        except requests.RequestException as exc:
            return Outcome("retry", f"{type(exc).__name__}")
        if 200 <= resp.status_code < 300:
            return Outcome("sent")
        reason = f"http {resp.status_code}"
        if resp.status_code >= 500 or resp.status_code in TRANSIENT:
            return Outcome("retry", reason)
        return Outcome("failed", reason)
