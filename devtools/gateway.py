"""A real local HTTP gateway for channel tests, demos and benchmarks.

It speaks the channels' request format (docs/channels.md): ``POST /<anything>`` with one message
object (header ``Idempotency-Key``), or ``POST /<anything>/batch`` with ``{"messages": [...]}``,
answered with per-message results. It records every request, counts idempotency keys, honours
them like a real gateway should (a key accepted before is answered 200 ``"duplicate": true`` and
counted as a *replay*, not accepted again; ``dedupe=False`` turns that off to count raw
duplicates), and injects faults at given rates: lognormal latency, 503s, timeouts (sleep past the
client's timeout, optionally after accepting, as real gateways do), and permanent 400s for some
recipients (the same keys every time). ``bare_batch_ok`` answers a batch ``200 {"ok": true}``
without per-message results, as some real batch gateways do once they have taken the batch.

Run it alone with ``python -m devtools.gateway --port 8099 [--latency-ms 20]``; ``GET /stats`` answers
the counts as JSON and ``POST /reset`` clears them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen() backlog: the default 5 resets bursts of new connections


@dataclass
class Faults:
    """What the gateway does wrong, and how often (rates are 0..1)."""

    median_latency_s: float = 0.0
    latency_sigma: float = 0.5
    error_rate: float = 0.0      # answer 503 (per request)
    timeout_rate: float = 0.0    # sleep past the client's timeout, then answer 504 (per request)
    timeout_s: float = 2.0
    timeout_accepts: bool = False  # a timed-out request was processed anyway (the client can't know)
    reject_rate: float = 0.0     # 400 "invalid recipient" for this share of keys (stable per key)
    dedupe: bool = True          # honour idempotency keys
    bare_batch_ok: bool = False  # answer an accepted batch 200 {"ok": true}, with no per-message results
    count_only: bool = False     # keep counts only, no per-key record (millions of messages in bounded memory)
    seed: int = 7


@dataclass
class Record:
    """What the gateway saw."""

    requests: int = 0
    messages: int = 0
    keys: Counter = field(default_factory=Counter)       # idempotency key -> times received
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> first accepted body
    accepted_count: Counter = field(default_factory=Counter)  # key -> times accepted as a new message
    replays: Counter = field(default_factory=Counter)    # key -> re-sends of an accepted key (answered 200)
    rejected: Counter = field(default_factory=Counter)   # key -> 400s
    accept_times: list[float] = field(default_factory=list)  # time.time() of each acceptance
    paths: Counter = field(default_factory=Counter)

    @property
    def duplicates(self) -> int:
        """Messages accepted more than once (what a user would see twice)."""
        return sum(n - 1 for n in self.accepted_count.values() if n > 1)

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "messages": self.messages, "unique_keys": len(self.keys),
                "accepted": len(self.accepted), "duplicates": self.duplicates,
                "replays": sum(self.replays.values()), "rejected": sum(self.rejected.values()),
                "first_accept": min(self.accept_times, default=None),
                "last_accept": max(self.accept_times, default=None), "paths": dict(self.paths)}


class Gateway:
    """A threaded HTTP server on 127.0.0.1; ``url`` is where channels POST."""

    def __init__(self, faults: Faults | None = None, port: int = 0) -> None:
        self.faults = faults or Faults()
        self.record = Record()
        self._lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._conns: set[Any] = set()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else small answers wait ~40 ms on delayed ACKs

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                with gateway._lock:
                    gateway._conns.add(self.connection)

            def finish(self) -> None:
                with gateway._lock:
                    gateway._conns.discard(self.connection)
                super().finish()

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                with gateway._lock:
                    if self.path.rstrip("/").endswith("/accept_times"):
                        self._answer(200, {"accept_times": list(gateway.record.accept_times)})
                    else:
                        self._answer(200, gateway.record.summary())

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.rstrip("/").endswith("/reset"):
                    gateway.reset()
                    self._answer(200, {"status": 200})
                    return
                status, payload = gateway.handle(self.path, self.headers.get("Idempotency-Key", ""), body)
                self._answer(status, payload)

        self.server = _Server(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base}/send"

    def reset(self) -> None:
        with self._lock:
            self.record = Record()

    def _rejects(self, key: str) -> bool:
        if not self.faults.reject_rate:
            return False
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
        return h / 2**64 < self.faults.reject_rate

    def _accept(self, key: str, message: dict[str, Any], answered: bool = True) -> tuple[int, str]:
        """Accept one message (lock held); return its status and error.

        ``answered=False``: processed under a timeout, so the client never sees this answer.
        """
        r = self.record
        r.messages += 1
        if self.faults.count_only:
            return 200, ""
        r.keys[key] += 1
        if self._rejects(key):
            if answered:
                r.rejected[key] += 1
            return 400, "invalid recipient"
        if key in r.accepted and self.faults.dedupe:
            r.replays[key] += 1
            return 200, ""
        r.accepted.setdefault(key, message)
        r.accepted_count[key] += 1
        r.accept_times.append(time.time())
        return 200, ""

    def handle(self, path: str, header_key: str, body: bytes) -> tuple[int, dict[str, Any]]:
        f = self.faults
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return 400, {"status": 400, "error": "body is not JSON"}
        batch = path.rstrip("/").endswith("/batch")
        messages = data.get("messages", []) if batch else [data]
        with self._lock:
            self.record.requests += 1
            self.record.paths[path] += 1
            roll = self._rng.random()
            latency = self._rng.lognormvariate(0, f.latency_sigma) * f.median_latency_s if f.median_latency_s else 0.0
        if roll < f.timeout_rate:
            if f.timeout_accepts:
                with self._lock:
                    for m in messages:
                        self._accept(m.get("idempotency_key") or header_key, m, answered=False)
            time.sleep(f.timeout_s)
            return 504, {"status": 504, "error": "gateway timeout"}
        if latency:
            time.sleep(latency)
        if roll < f.timeout_rate + f.error_rate:
            return 503, {"status": 503, "error": "overloaded"}
        with self._lock:
            results = []
            for m in messages:
                key = m.get("idempotency_key") or header_key
                status, error = self._accept(key, m)
                results.append({"idempotency_key": key, "status": status, "error": error or None})
        if batch and f.bare_batch_ok:
            return 200, {"ok": True}
        if batch:
            return 200, {"status": 200, "results": results}
        return results[0]["status"], results[0]

    def __enter__(self) -> Gateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:  # drop kept-alive client connections too, as a stopped process would
            for conn in list(self._conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class GatewayProcess:
    """This gateway in its own Python process: its timing is not disturbed by the caller's GIL or
    garbage collector (a big pytest process can pause for a large fraction of a second, which would
    show as a burst in the acceptance times). ``GET /stats``, ``GET /accept_times``, ``POST /reset``.
    """

    def __init__(self, workdir: Path, latency_ms: float = 0.0, sigma: float = 0.5, count_only: bool = False) -> None:
        import subprocess
        import sys

        port_file = workdir / f"gateway-{id(self)}.port"
        self.proc = subprocess.Popen([sys.executable, "-m", "devtools.gateway", "--port", "0", "--latency-ms",
                                      str(latency_ms), "--sigma", str(sigma), "--port-file", str(port_file),
                                      *(["--count-only"] if count_only else [])],
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the gateway process did not start")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{port_file.read_text()}"
        self.url = f"{self.base}/send"

    def _get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(f"{self.base}{path}", timeout=30) as answer:
            return json.loads(answer.read())

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    def accept_times(self) -> list[float]:
        return self._get("/accept_times")["accept_times"]

    def reset(self) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.base}/reset", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="median of the lognormal latency")
    parser.add_argument("--sigma", type=float, default=0.5, help="sigma of the lognormal latency")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--timeout-rate", type=float, default=0.0)
    parser.add_argument("--reject-rate", type=float, default=0.0)
    parser.add_argument("--bare-batch-ok", action="store_true",
                        help='answer batches 200 {"ok": true} without per-message results')
    parser.add_argument("--count-only", action="store_true",
                        help="count messages only, keep no per-key record (a big load in bounded memory)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args()
    faults = Faults(median_latency_s=args.latency_ms / 1000, latency_sigma=args.sigma, error_rate=args.error_rate,
                    timeout_rate=args.timeout_rate, reject_rate=args.reject_rate,
                    bare_batch_ok=args.bare_batch_ok, count_only=args.count_only)
    with Gateway(faults, args.port) as gw:
        if args.port_file:
            with open(args.port_file, "w") as fh:
                fh.write(str(gw.server.server_address[1]))
        print(f"gateway listening on {gw.base}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
