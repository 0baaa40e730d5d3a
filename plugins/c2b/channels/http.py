"""HTTP JSON gateways: the base of the ``push``, ``sms``, ``outbound_call``, ``private_domain`` and
``webhook`` channels.

Request format (docs/channels.md):

- single: ``POST <url>`` with the message as a JSON object and the header ``Idempotency-Key``;
- batch: ``POST <url>/batch`` (extra ``batch_path``) with ``{"messages": [...]}``; the answer is
  ``{"results": [{"idempotency_key": ..., "status": <http-like code>, "error": ...}, ...]}``, or a
  bare 2xx (e.g. ``{"ok": true}``): the gateway took the whole batch, every message is sent. A
  connection with the extra ``per_message_results: true`` says its gateway always answers per
  message: a 2xx without them is then a protocol error, recorded as failed for each message and
  not retried. A result list that leaves a message out (or gives it no status) is a protocol error
  for that message either way. A batch answered 2xx is never sent again.

Every message object carries ``idempotency_key`` (the same on every re-send), so the gateway can
drop a message it already accepted. Outcomes: 2xx sent; 408, 425, 429, 5xx, timeouts and network
errors transient (retried by the engine with backoff); any other 4xx permanent (failed, with the
code and the gateway's error as the reason).

The delivery loop sends through :mod:`c2b.channels.async_http` (one event loop, a pool of
keep-alive connections); :meth:`HttpJsonChannel.send` keeps a blocking client (``http.client``,
one keep-alive connection per thread) for callers without a loop. Both build the same requests and
read the answers with the same rules.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from c2b.channels.async_http import AsyncHttpClient, GatewayUrl, tls_context
from c2b.channels.base import Channel, ChannelConfig, Message, Outcome, flag

TRANSIENT = {408, 425, 429}
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest)


def classify(status: int, error: str = "") -> Outcome:
    """Map an HTTP(-like) status to an outcome."""
    if 200 <= status < 300:
        return Outcome("sent")
    reason = f"http {status}" + (f": {error}" if error else "")
    if status >= 500 or status in TRANSIENT:
        return Outcome("retry", reason)
    return Outcome("failed", reason[:160])


class HttpClient:
    """POST JSON to one base URL over per-thread keep-alive connections."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        target = GatewayUrl.parse(url)
        self.tls = tls
        self.https, self.host, self.port = target.https, target.host, target.port
        self.base_path, self.query = target.base_path, target.query
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.tls)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def post(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """POST ``payload`` as JSON to ``base + path``; return (status, body). Raises OSError/HTTPException."""
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        hdrs = {**self.headers, **(headers or {})}
        target = f"{self.base_path}{path}{self.query}" or "/"
        conn = self._conn()
        for attempt in (0, 1):
            reused = conn.sock is not None
            try:
                conn.request("POST", target, body, hdrs)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    conn.close()
                return resp.status, data
            except _STALE:
                conn.close()
                if not (reused and attempt == 0):  # only a kept-alive socket the server closed is retried here
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _error_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"network: {type(exc).__name__}"


class HttpJsonChannel(Channel):
    """A gateway that takes JSON messages; subclasses only say what a message looks like."""

    name = "http"
    max_batch = 1000
    batch_path_default = "/batch"

    def __init__(self, config: ChannelConfig) -> None:
        super().__init__(config)
        if not config.url:
            raise ValueError(f"channel {self.name!r} needs a URL: set the Airflow Connection's host "
                             "(and port/schema) or its extra 'url'")
        tls = tls_context(config.extra.get("ca_file")) if GatewayUrl.parse(config.url).https else None
        self.client = HttpClient(config.url, config.token, self.timeout, tls)
        self.aclient = AsyncHttpClient(config.url, config.token, self.timeout, tls)
        self.batch_path = str(config.extra.get("batch_path", self.batch_path_default))
        self.per_message_results = flag(config.extra, "per_message_results")

    def body(self, message: Message) -> dict[str, Any]:
        """Return the JSON object sent for one message (the common envelope plus channel fields)."""
        return {**message.to_json(), **self.fields(message)}

    def fields(self, message: Message) -> dict[str, Any]:
        """Channel-specific fields of one message (none for a generic gateway)."""
        return {}

    def send(self, message: Message) -> Outcome:
        try:
            status, data = self.client.post("", self.body(message), {"Idempotency-Key": message.idempotency_key})
        except (OSError, http.client.HTTPException) as exc:
            return Outcome("retry", _error_reason(exc))
        return _single_outcome(status, data)

    def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        if len(messages) == 1:
            return [self.send(messages[0])]
        try:
            status, data = self.client.post(self.batch_path, {"messages": [self.body(m) for m in messages]})
        except (OSError, http.client.HTTPException) as exc:
            return [Outcome("retry", _error_reason(exc))] * len(messages)
        return _batch_outcomes(messages, status, data, self.per_message_results)

    async def asend_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """The same requests as :meth:`send_batch`, on the event loop (no thread per request)."""
        if len(messages) == 1:
            m = messages[0]
            try:
                status, data = await self.aclient.post("", self.body(m), {"Idempotency-Key": m.idempotency_key})
            except OSError as exc:
                return [Outcome("retry", _error_reason(exc))]
            return [_single_outcome(status, data)]
        try:
            status, data = await self.aclient.post(self.batch_path, {"messages": [self.body(m) for m in messages]})
        except OSError as exc:
            return [Outcome("retry", _error_reason(exc))] * len(messages)
        return _batch_outcomes(messages, status, data, self.per_message_results)

    async def aclose(self) -> None:
        await self.aclient.aclose()

    def close(self) -> None:
        self.client.close()


def _single_outcome(status: int, data: bytes) -> Outcome:
    return classify(status, _gateway_error(data) if status >= 300 else "")


def _batch_outcomes(messages: Sequence[Message], status: int, data: bytes,
                    per_message_results: bool = False) -> list[Outcome]:
    """One outcome per message from a batch answer (``results`` matched by idempotency key).

    A 2xx means the gateway accepted the batch, so nothing of it is ever ``retry``: without
    results every message is sent, unless the connection promised per-message results, in which
    case their absence is a protocol error (failed: resending could deliver the batch twice).
    """
    if not 200 <= status < 300:
        return [classify(status, _gateway_error(data))] * len(messages)
    results = _batch_results(data)
    if results is None:
        if per_message_results:
            return [Outcome("failed", f"protocol: http {status} batch answer without per-message results "
                                      "(connection extra per_message_results is true)")] * len(messages)
        return [Outcome("sent")] * len(messages)
    out = []
    for m in messages:
        r = results.get(m.idempotency_key)
        code = _result_status(r) if r is not None else None
        if code is None:  # the gateway answers per message but not for this one: unknown, never resent
            out.append(Outcome("failed", f"protocol: http {status} batch answer without a valid result "
                                         "for this message"))
        else:
            out.append(classify(code, str(r.get("error") or "") if r else ""))
    return out


def _batch_results(data: bytes) -> dict[str, dict[str, Any]] | None:
    """Return a batch answer's per-message results by idempotency key, or None if it has none."""
    try:
        answer = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        return None
    return {str(r["idempotency_key"]): r for r in answer["results"]
            if isinstance(r, dict) and "idempotency_key" in r}


def _result_status(result: dict[str, Any]) -> int | None:
    try:
        return int(result["status"])
    except (KeyError, TypeError, ValueError):
        return None


def _gateway_error(data: bytes) -> str:
    try:
        answer = json.loads(data)
    except ValueError:
        return ""
    return str(answer.get("error") or "")[:120] if isinstance(answer, dict) else ""
