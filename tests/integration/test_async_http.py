"""The asyncio HTTP client the delivery loop sends through, against real local servers.

The gateway (``devtools/gateway.py``) checks the channel rules (keys, batches, errors, timeouts,
restarts) through ``asend_batch``, as the delivery loop calls it. A scripted TCP server checks
the answer framings a real gateway may use that ``http.server`` never produces.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from c2b.channels import ChannelConfig, Message, make_channel
from c2b.channels.async_http import AsyncHttpClient

from devtools.gateway import Faults, Gateway


def _message(uid: str, channel: str = "push") -> Message:
    return Message(f"key-{uid}", "p", "r", "t", channel, uid, "a", f"hello {uid}",
                   {"link": "https://x", "title": "T", "group": "g1"}, {"type": "red_packet", "amount": 5})


def _send(channel, messages: list[Message]):
    async def go():
        try:
            return await channel.asend_batch(messages)
        finally:
            await channel.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("channel", ["push", "sms", "outbound_call", "private_domain", "webhook"])
def test_async_sends_carry_key_token_and_fields_single_and_batch(channel: str) -> None:
    with Gateway() as gw:
        single = make_channel(channel, ChannelConfig(url=gw.url, token="secret"))

        async def singles():
            try:
                return await asyncio.gather(*[single.asend_batch([_message(str(i), channel)]) for i in range(20)])
            finally:
                await single.aclose()

        outcomes = [o for answer in asyncio.run(singles()) for o in answer]
        batch = make_channel(channel, ChannelConfig(url=gw.url, extra={"batch_size": 10}))
        outcomes += _send(batch, [_message(f"b{i}", channel) for i in range(10)])
    assert [o.status for o in outcomes] == ["sent"] * 30
    rec = gw.record
    assert rec.requests == 21 and rec.paths == {"/send": 20, "/send/batch": 1}
    assert set(rec.accepted) == {f"key-{i}" for i in range(20)} | {f"key-b{i}" for i in range(10)}
    assert rec.accepted["key-7"]["uid"] == "7"
    assert rec.accepted["key-b3"]["offer"] == {"type": "red_packet", "amount": 5}


def test_async_errors_are_classified_like_the_blocking_client() -> None:
    with Gateway(Faults(error_rate=1.0)) as gw:
        ch = make_channel("sms", ChannelConfig(url=gw.url))
        assert [o.reason for o in _send(ch, [_message("1")])] == ["http 503: overloaded"]
        assert [o.reason for o in _send(ch, [_message("1"), _message("2")])] == ["http 503: overloaded"] * 2
    with Gateway(Faults(reject_rate=0.5)) as gw:
        outcomes = _send(make_channel("sms", ChannelConfig(url=gw.url, extra={"batch_size": 50})),
                         [_message(str(i)) for i in range(50)])
    rejected = set(gw.record.rejected)
    assert 0 < len(rejected) < 50
    for i, o in enumerate(outcomes):
        expected = ("failed", "http 400: invalid recipient") if f"key-{i}" in rejected else ("sent", "")
        assert (o.status, o.reason) == expected
    [o] = _send(make_channel("push", ChannelConfig(url="http://127.0.0.1:9/x")), [_message("1")])
    assert o.status == "retry" and o.reason.startswith("network")
    with Gateway(Faults(timeout_rate=1.0, timeout_s=0.5)) as gw:
        [o] = _send(make_channel("push", ChannelConfig(url=gw.url, extra={"timeout": 0.1})), [_message("1")])
    assert (o.status, o.reason) == ("retry", "timeout")


def test_async_client_reconnects_when_the_kept_alive_connection_died() -> None:
    async def scenario() -> tuple[list, set]:
        with Gateway() as gw:
            port = gw.server.server_address[1]
            ch = make_channel("push", ChannelConfig(url=gw.url))
            first = await ch.asend_batch([_message("1")])
        with Gateway(port=port) as gw2:  # the pooled socket is dead now; the send must still go
            second = await ch.asend_batch([_message("2")])
            await ch.aclose()
            return first + second, set(gw2.record.accepted)

    outcomes, accepted = asyncio.run(scenario())
    assert [o.status for o in outcomes] == ["sent", "sent"] and accepted == {"key-2"}


class ScriptedServer:
    """A TCP server answering each request with the next canned bytes (a real socket, no HTTP library)."""

    def __init__(self, answers: list[bytes], close_after: set[int] = frozenset()) -> None:
        self.answers = answers
        self.close_after = close_after  # answer numbers after which the server closes the connection
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        n = 0
        while n < len(self.answers):
            conn, _ = self.sock.accept()
            self.connections += 1
            with conn:
                buf = b""
                while n < len(self.answers):
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    buf = rest[length:]
                    conn.sendall(self.answers[n])
                    n += 1
                    if n - 1 in self.close_after:
                        break


@pytest.fixture
def scripted() -> Iterator[type[ScriptedServer]]:
    yield ScriptedServer


def _post_all(port: int, n: int) -> list[tuple[int, bytes]]:
    async def go():
        client = AsyncHttpClient(f"http://127.0.0.1:{port}/hook", token="t0k")
        try:
            return [await client.post("", {"i": i}, {"Idempotency-Key": f"k{i}"}) for i in range(n)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_async_client_reads_every_answer_framing(scripted) -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nchun\r\n3\r\nked\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold1",
        b"HTTP/1.1 200 OK\r\n\r\nuntil-close",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlast",
    ]
    server = scripted(answers, close_after={4, 5, 6})
    got = _post_all(server.port, len(answers))
    assert got == [(200, b"ok"), (201, b"new"), (200, b"chunked"), (204, b""), (503, b"busy"), (200, b"old1"),
                   (200, b"until-close"), (200, b"last")]
    # One connection kept alive for the first five, then a new one after each answer that ended it.
    assert server.connections == 4
    first = server.requests[0]
    assert first.startswith(b"POST /hook HTTP/1.1\r\n") and b"Authorization: Bearer t0k" in first
    assert b"Idempotency-Key: k0" in first and first.endswith(b'{"i":0}')


def test_async_client_rejects_an_answer_that_is_not_http(scripted) -> None:
    server = scripted([b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    with pytest.raises(OSError, match="not an HTTP/1.x answer"):
        _post_all(server.port, 1)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """The gateway behind TLS with a certificate for 127.0.0.1 from its own CA (self-signed)."""
    import ssl
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "gateway.pem", folder / "gateway.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    with Gateway() as gw:
        gw.server.socket = server_side.wrap_socket(gw.server.socket, server_side=True)
        yield gw, str(cert)


@pytest.mark.parametrize("client", ["async", "blocking"])
def test_https_gateway_signed_by_the_connections_ca_file(tls_gateway, client: str) -> None:
    gw, ca_file = tls_gateway
    url = gw.url.replace("http://", "https://")
    trusted = make_channel("push", ChannelConfig(url=url, extra={"ca_file": ca_file}))
    untrusted = make_channel("push", ChannelConfig(url=url))
    if client == "async":
        [ok], [refused] = _send(trusted, [_message(f"tls-{client}")]), _send(untrusted, [_message("tls-x")])
    else:
        ok, refused = trusted.send(_message(f"tls-{client}")), untrusted.send(_message("tls-x"))
    assert ok.status == "sent" and f"key-tls-{client}" in gw.record.accepted
    # Not signed by a CA the system trusts: refused (and never delivered), with the reason.
    assert (refused.status, refused.reason) == ("retry", "network: SSLCertVerificationError")
    assert "key-tls-x" not in gw.record.accepted


def test_ca_file_must_be_a_pem_bundle(tmp_path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        make_channel("sms", ChannelConfig(url="https://gw.example", extra={"ca_file": str(tmp_path / "none.pem")}))
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="not a PEM bundle"):
        make_channel("sms", ChannelConfig(url="https://gw.example", extra={"ca_file": str(tmp_path / "bad.pem")}))
