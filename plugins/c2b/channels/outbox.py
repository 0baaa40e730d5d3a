"""The ``outbox`` channel: each message as a JSON line in the run's outbox folder.

It is what the demo prints from, and a safe default for trying a plan before wiring a gateway.
The folder is ``<data url>/outbox/<plan>/<run>/`` (:mod:`c2b.storage`):

- on ``file://`` (the default) every message is appended to ``outbox.jsonl`` (``extra.file``);
- on object storage (no append there) every batch is one object
  ``outbox.jsonl.d/part-<writer>-<seq>.jsonl``, written whole before its messages count as sent;
  ``writer`` is unique per channel instance, so each attempt of each shard writes its own objects.

Readers take every ``*.jsonl`` under the run's folder. A file cannot refuse a repeated idempotency
key the way a gateway does: after a worker is killed mid-send, the retry writes the messages that
were in flight again, so readers dedupe by ``idempotency_key`` (the engine's ledger still records
each message once).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from c2b.channels.base import Channel, ChannelConfig, Message, Outcome

# What json.dumps(..., ensure_ascii=False) uses: the encoder, and its function for strings.
_ENCODER = json.JSONEncoder(ensure_ascii=False)
_STR = json.encoder.encode_basestring


class OutboxChannel(Channel):
    name = "outbox"
    needs_connection = False
    max_batch = 10_000
    default_batch = 100

    def __init__(self, config: ChannelConfig) -> None:
        from c2b import storage

        super().__init__(config)
        name = config.extra.get("file", "outbox.jsonl")
        local = storage.local_of(config.run_dir or ".")
        self._lock = threading.Lock()
        self._objects: storage.ObjectWriter | None = None
        self._json_of: dict[int, tuple[Any, str]] = {}  # id -> (assets or offer, its JSON)
        if local is None:
            folder = storage.as_path(config.run_dir) / f"{name}.d"
            self.path: Any = folder
            self._objects = storage.ObjectWriter(folder, "part", ".jsonl")
            return
        local.mkdir(parents=True, exist_ok=True)
        self.path = local / name
        self._file = self.path.open("a", encoding="utf-8")

    def _line(self, m: Message) -> str:
        """Return ``json.dumps(m.to_json(), ensure_ascii=False) + "\\n"``, the same characters,
        without building the dict: the string fields through the encoder's own string function,
        ``assets`` and ``offer`` (one shared object per touch, see WorkBuilder) encoded once each."""
        k, p, r, t, c, u, v, x = (m.idempotency_key, m.plan_id, m.run_id, m.touch, m.channel, m.uid, m.variant,
                                  m.text)
        if not (type(k) is type(p) is type(r) is type(t) is type(c) is type(u) is type(v) is type(x) is str):
            return json.dumps(m.to_json(), ensure_ascii=False) + "\n"
        e = _STR
        return (f'{{"idempotency_key": {e(k)}, "plan": {e(p)}, "run": {e(r)}, "touch": {e(t)}, "channel": {e(c)}, '
                f'"uid": {e(u)}, "variant": {e(v)}, "text": {e(x)}, "assets": {self._encoded(m.assets)}, '
                f'"offer": {self._encoded(m.offer)}}}\n')

    def _encoded(self, value: Any) -> str:
        """Return the JSON of ``value``, remembered per object while it is held (ids are not reused
        while the cache keeps the object alive; messages' dicts are never mutated)."""
        if value is None:
            return "null"
        hit = self._json_of.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        text = _ENCODER.encode(value)
        if len(self._json_of) >= 256:
            self._json_of.clear()
        self._json_of[id(value)] = (value, text)
        return text

    def send(self, message: Message) -> Outcome:
        return self.send_batch([message])[0]

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        line = self._line
        lines = "".join([line(m) for m in messages])
        if self._objects is not None:
            self._objects.write(lines.encode("utf-8"))  # raises StorageError (URL + cause): not sent
            return [Outcome("sent")] * len(messages)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
        return [Outcome("sent")] * len(messages)

    def close(self) -> None:
        if self._objects is None:
            self._file.close()
