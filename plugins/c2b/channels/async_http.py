"""A small asyncio HTTP/1.1 client for JSON POSTs to one gateway, over keep-alive connections.

Why not threads + ``http.client`` (the blocking client, still used by ``Channel.send``): with a
hundred sends in flight, a hundred Python threads spend more CPU handing the GIL to each other than
on the requests, and each response waits for its thread to be scheduled. One event loop with a pool
of keep-alive connections costs a fraction of that per request (see ``bench/deliver.py``).

Why not ``httpx``/``aiohttp``: the delivery loop needs POST, a body, a status and keep-alive, no
more; their generality costs several times the CPU per request of this client. What a gateway may
answer is still handled in full: ``Content-Length`` or ``chunked`` bodies, a body delimited by
the server closing, ``Connection: close``, HTTP/1.0, interim ``1xx`` answers, TLS (``https://``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# What a kept-alive connection the server has quietly closed looks like on the next request.
STALE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)
_MAX_HEAD = 64 * 1024


class HttpProtocolError(OSError):
    """The gateway's answer is not HTTP/1.x as we can read it (a network-level failure: retried)."""


@dataclass(frozen=True)
class GatewayUrl:
    """Where a channel's requests go: the parts of its ``http(s)://host[:port]/path?query`` URL."""

    https: bool
    host: str
    port: int
    base_path: str
    query: str  # with its "?", or ""

    @classmethod
    def parse(cls, url: str) -> GatewayUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"channel URL must be http(s)://host[:port]/path, got {url!r}")
        https = parts.scheme == "https"
        return cls(https, parts.hostname, parts.port or (443 if https else 80), parts.path.rstrip("/"),
                   f"?{parts.query}" if parts.query else "")

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return host if self.port == (443 if self.https else 80) else f"{host}:{self.port}"


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Return the TLS settings for an https gateway: the system's CAs, or the PEM bundle ``ca_file``
    (a company CA that signed the gateway's certificate). Certificates are always verified."""
    if ca_file and not Path(ca_file).is_file():
        raise ValueError(f"connection extra 'ca_file': no such file {ca_file!r} (a PEM bundle of CA certificates)")
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except ssl.SSLError as exc:
        raise ValueError(f"connection extra 'ca_file': {ca_file!r} is not a PEM bundle of CA certificates: {exc}"
                         ) from None


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:  # its loop is already closed
            pass


class AsyncHttpClient:
    """POST JSON to one base URL; the same interface as ``HttpClient.post``, awaitable.

    Bound to the event loop it is first used on: connections live in that loop. Call
    :meth:`aclose` in that loop when done; a client used again on a new loop starts a new pool.
    """

    def __init__(self, url: str, token: str = "", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None) -> None:
        target = GatewayUrl.parse(url)
        self.https, self.host, self.port = target.https, target.host, target.port
        self.base_path, self.query = target.base_path, target.query
        self.timeout = timeout
        self._fixed_headers = f"Host: {target.host_header}\r\nContent-Type: application/json\r\n"
        if token:
            self._fixed_headers += f"Authorization: Bearer {token}\r\n"
        self._ssl = (tls or ssl.create_default_context()) if self.https else None
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """POST ``payload`` as JSON to ``base + path``; return (status, body).

        Raises ``OSError`` (``TimeoutError`` included) when no complete answer came back.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop: the old loop's connections are gone
            self._loop = loop
            self._idle = []
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        target = f"{self.base_path}{path}{self.query}" or "/"
        request = (f"POST {target} HTTP/1.1\r\n{self._fixed_headers}{extra}Content-Length: {len(body)}\r\n\r\n"
                   .encode("latin-1") + body)
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                async with asyncio.timeout(self.timeout):
                    if conn is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self._ssl,
                                                                       limit=_MAX_HEAD)
                        conn = _Connection(reader, writer)
                    conn.writer.write(request)
                    status, data, keep = await _read_response(conn.reader)
            except STALE as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 0:  # a kept-alive socket the server closed: once more, fresh
                    continue
                raise ConnectionResetError(f"connection closed by the gateway: {type(exc).__name__}") from exc
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn.close()
            return status, data
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close the pooled connections (call from the loop they belong to)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            try:
                await conn.writer.wait_closed()
            except (OSError, RuntimeError):
                pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Read one answer; return (status, body, connection reusable)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpProtocolError("answer headers larger than 64 KiB") from exc
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise HttpProtocolError(f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        try:
            status = int(status_line[1])
        except ValueError as exc:
            raise HttpProtocolError(f"bad status line: {lines[0][:60]!r}") from exc
        if 100 <= status < 200:  # interim answer (100 Continue, 103 Early Hints): the real one follows
            continue
        break
    length = -1
    chunked = False
    keep = status_line[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            v = value.strip().lower()
            keep = v == b"keep-alive" if not keep else v != b"close"
    if status in (204, 304):
        return status, b"", keep
    if chunked:
        parts: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                    pass
                return status, b"".join(parts), keep
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if length >= 0:
        return status, await reader.readexactly(length), keep
    return status, await reader.read(), False  # delimited by the server closing the connection
