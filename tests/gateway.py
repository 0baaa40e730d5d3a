"""A real local HTTP gateway for channel tests, demos and benchmarks.

It records every request, counts idempotency keys (a repeated key is a re-send, not a new message),
and can inject latency (lognormal), 5xx answers and timeouts at a given rate. Run it alone with
``python tests/gateway.py --port 8099``.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Faults:
    """What the gateway does wrong, and how often (rates are 0..1)."""

    median_latency_s: float = 0.0
    latency_sigma: float = 0.5
    error_rate: float = 0.0      # answer 503
    timeout_rate: float = 0.0    # sleep past the client's timeout, then answer 504
    timeout_s: float = 2.0
    seed: int = 7


@dataclass
class Record:
    """What the gateway saw."""

    requests: int = 0
    keys: Counter = field(default_factory=Counter)       # idempotency key -> requests seen
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> first accepted body
    accepted_count: Counter = field(default_factory=Counter)  # key -> 2xx answers given


class Gateway:
    """A threaded HTTP server on 127.0.0.1; ``url`` is where channels POST."""

    def __init__(self, faults: Faults | None = None, port: int = 0) -> None:
        self.faults = faults or Faults()
        self.record = Record()
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = gateway._handle(self.headers.get("Idempotency-Key", ""), body)
                payload = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 1024
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/send"

    def _handle(self, key: str, body: bytes) -> int:
        f = self.faults
        with self._lock:
            self.record.requests += 1
            self.record.keys[key] += 1
            roll = self._rng.random()
            latency = self._rng.lognormvariate(0, f.latency_sigma) * f.median_latency_s if f.median_latency_s else 0.0
        if roll < f.timeout_rate:
            time.sleep(f.timeout_s)
            return 504
        if latency:
            time.sleep(latency)
        if roll < f.timeout_rate + f.error_rate:
            return 503
        with self._lock:
            if key not in self.record.accepted:
                self.record.accepted[key] = json.loads(body or b"{}")
            self.record.accepted_count[key] += 1
        return 200

    def __enter__(self) -> Gateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    args = parser.parse_args()
    with Gateway(Faults(median_latency_s=args.latency_ms / 1000, error_rate=args.error_rate), args.port) as gw:
        print(f"gateway listening on {gw.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
