"""The ``outbox`` channel: append each message as a JSON line to the run's outbox file.

It is what the demo prints from, and a safe default for trying a plan before wiring a gateway.
A file cannot refuse a repeated idempotency key the way a gateway does: after a worker is killed
mid-send, the retry re-appends the messages that were in flight, so readers of the file dedupe by
``idempotency_key`` (the engine's ledger still records each message once).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome


class OutboxChannel(Channel):
    name = "outbox"
    needs_connection = False
    max_batch = 10_000
    default_batch = 100

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config)
        folder = Path(config.run_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / config.extra.get("file", "outbox.jsonl")
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def send(self, message: Message) -> Outcome:
        return self.send_batch([message])[0]

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        lines = "".join(json.dumps(m.to_json(), ensure_ascii=False) + "\n" for m in messages)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
        return [Outcome("sent")] * len(messages)

    def close(self) -> None:
        self._file.close()
