"""The ``inapp`` channel: put a pop-up or banner into the user's in-app inbox in Redis.

App servers read ``c2b:inbox:{<uid>}`` (a HASH; ``HGETALL``) when the app opens and show the
entries whose ``expires_at`` (epoch seconds) is still ahead, at ``position`` (asset ``position``:
``popup`` by default, or ``banner``...). The field is the message's idempotency key, so a re-send
overwrites the same entry instead of adding a second pop-up. The key expires ``ttl_hours`` after
the latest write (connection extra, default 72).

Redis is the ``c2b_redis`` store unless the touch names its own connection (a Redis URL in
``host`` or extra ``url``). Batches are one pipelined round trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome


def inbox_key(uid: str) -> str:
    return "c2b:inbox:{" + uid + "}"


class InAppChannel(Channel):
    name = "inapp"
    needs_connection = False
    max_text_chars = 5000  # an in-app inbox message
    max_batch = 10_000
    default_batch = 100

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config)
        self.redis = config.redis
        if self.redis is None and config.url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            self.redis = redis.Redis.from_url(config.url)
        if self.redis is None:
            raise ValueError("inapp channel needs Redis: the c2b_redis connection or a redis:// URL")
        self.ttl = int(float(config.extra.get("ttl_hours", 72)) * 3600)

    def entry(self, message: Message, now: float) -> str:
        return json.dumps({
            "idempotency_key": message.idempotency_key, "plan": message.plan_id, "touch": message.touch,
            "position": message.assets.get("position", "popup"), "text": message.text,
            "assets": message.assets, "offer": message.offer,
            "created_at": int(now), "expires_at": int(now) + self.ttl,
        }, ensure_ascii=False)

    def send(self, message: Message) -> Outcome:
        return self.send_batch([message])[0]

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        import redis

        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for m in messages:
            key = inbox_key(m.uid)
            pipe.hset(key, m.idempotency_key, self.entry(m, now))
            pipe.expire(key, self.ttl)
        try:
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return [Outcome("retry", f"redis: {type(exc).__name__}")] * len(messages)
        return [Outcome("sent")] * len(messages)

    def read_inbox(self, uid: str, now: float | None = None) -> list[dict[str, Any]]:
        """Return the live entries of one inbox, as an app server would (newest first)."""
        now = time.time() if now is None else now
        entries = [json.loads(v) for v in self.redis.hgetall(inbox_key(uid)).values()]
        return sorted((e for e in entries if e["expires_at"] > now), key=lambda e: -e["created_at"])
