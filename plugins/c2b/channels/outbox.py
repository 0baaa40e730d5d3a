"""The ``outbox`` channel: append each message as a JSON line to the run's outbox file.

It is what the demo prints from, and a safe default for trying a plan before wiring a gateway.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome


class OutboxChannel(Channel):
    name = "outbox"

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config)
        folder = Path(config.run_dir or ".")
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / config.extra.get("file", "outbox.jsonl")
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def send(self, message: Message) -> Outcome:
        line = json.dumps(message.to_json(), ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
        return Outcome("sent")

    def close(self) -> None:
        self._file.close()
