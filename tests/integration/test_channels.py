"""Every channel against real receivers: the HTTP gateway, Redis (in-app inbox), a file (outbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from c2b.channels import REGISTRY, ChannelConfig, Message, make_channel
from c2b.channels.inapp import InAppChannel, inbox_key

from devtools.gateway import Faults, Gateway

HTTP_CHANNELS = ["push", "sms", "outbound_call", "private_domain", "webhook"]


def _message(uid: str, channel: str = "push") -> Message:
    return Message(f"key-{uid}", "p", "r", "t", channel, uid, "a", f"hello {uid}",
                   {"link": "https://x", "title": "T", "group": "g1"}, {"type": "red_packet", "amount": 5})


@pytest.mark.parametrize("channel", HTTP_CHANNELS)
def test_http_channels_single_and_batch_carry_key_offer_and_their_fields(channel: str) -> None:
    with Gateway() as gw:
        single = make_channel(channel, ChannelConfig(url=gw.url, token="secret"))
        outcomes = [single.send(_message(str(i), channel)) for i in range(5)]
        batch = make_channel(channel, ChannelConfig(url=gw.url, extra={"batch_size": 10}))
        outcomes += batch.send_batch([_message(f"b{i}", channel) for i in range(10)])
        single.close()
        batch.close()
    assert all(o.status == "sent" for o in outcomes)
    rec = gw.record
    assert rec.requests == 6 and rec.paths == {"/send": 5, "/send/batch": 1}
    assert set(rec.accepted) == {f"key-{i}" for i in range(5)} | {f"key-b{i}" for i in range(10)}
    body = rec.accepted["key-b3"]
    assert body["uid"] == "b3" and body["offer"] == {"type": "red_packet", "amount": 5}
    assert body["idempotency_key"] == "key-b3" and body["channel"] == channel
    specific = {"push": ("body", "hello b3"), "sms": ("text", "hello b3"), "outbound_call": ("script", "hello b3"),
                "private_domain": ("group", "g1"), "webhook": ("text", "hello b3")}[channel]
    assert body[specific[0]] == specific[1]


def test_http_channel_classifies_errors_and_batch_results() -> None:
    with Gateway(Faults(error_rate=1.0)) as gw:
        ch = make_channel("sms", ChannelConfig(url=gw.url))
        assert ch.send(_message("1")).status == "retry"
        assert [o.reason for o in ch.send_batch([_message("1"), _message("2")])] == ["http 503: overloaded"] * 2
    with Gateway(Faults(reject_rate=0.5)) as gw:
        ch = make_channel("sms", ChannelConfig(url=gw.url, extra={"batch_size": 50}))
        outcomes = ch.send_batch([_message(str(i)) for i in range(50)])
    rejected = {k for k in gw.record.rejected}
    for i, o in enumerate(outcomes):
        if f"key-{i}" in rejected:
            assert (o.status, o.reason) == ("failed", "http 400: invalid recipient")
        else:
            assert o.status == "sent"
    assert 0 < len(rejected) < 50
    # Nothing listens on port 9: a network error is transient; so is a timeout.
    assert make_channel("push", ChannelConfig(url="http://127.0.0.1:9/x")).send(_message("1")).reason.startswith("network")
    with Gateway(Faults(timeout_rate=1.0, timeout_s=0.5)) as gw:
        o = make_channel("push", ChannelConfig(url=gw.url, extra={"timeout": 0.1})).send(_message("1"))
    assert (o.status, o.reason) == ("retry", "timeout")


def test_http_channel_reconnects_after_the_gateway_restarts() -> None:
    with Gateway() as gw:
        port = gw.server.server_address[1]
        ch = make_channel("push", ChannelConfig(url=gw.url))
        assert ch.send(_message("1")).status == "sent"
    with Gateway(port=port) as gw2:  # the kept-alive socket is dead now; the send must still go
        assert ch.send(_message("2")).status == "sent"
        assert set(gw2.record.accepted) == {"key-2"}


def test_channel_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="needs a URL"):
        make_channel("push", ChannelConfig())
    with pytest.raises(ValueError, match="batch_size"):
        make_channel("push", ChannelConfig(url="http://h/x", extra={"batch_size": "lots"}))
    with pytest.raises(ValueError, match="not available"):
        make_channel("carrier_pigeon", ChannelConfig())
    ch = make_channel("sms", ChannelConfig(url="http://h/x", extra={"rate_limit": "2000", "timeout": 3}))
    assert (ch.rate_limit, ch.timeout, ch.batch_size) == (2000.0, 3.0, 1)
    assert set(REGISTRY) == {"push", "sms", "outbound_call", "private_domain", "inapp", "webhook", "outbox"}


def test_inapp_writes_popups_to_the_users_inbox_once_per_key(redis_client) -> None:
    ch = make_channel("inapp", ChannelConfig(redis=redis_client, extra={"ttl_hours": 1}))
    assert isinstance(ch, InAppChannel) and ch.batch_size == 100
    msgs = [_message("u1"), _message("u2")]
    assert [o.status for o in ch.send_batch(msgs)] == ["sent", "sent"]
    assert ch.send(msgs[0]).status == "sent"  # a re-send overwrites the same entry
    inbox = ch.read_inbox("u1")
    assert len(inbox) == 1 and inbox[0]["position"] == "popup" and inbox[0]["offer"]["amount"] == 5
    assert 3500 < redis_client.ttl(inbox_key("u1")) <= 3600
    assert ch.read_inbox("u1", now=inbox[0]["expires_at"] + 1) == []


def test_outbox_appends_json_lines(tmp_path: Path) -> None:
    ch = make_channel("outbox", ChannelConfig(run_dir=str(tmp_path)))
    ch.send_batch([_message("1"), _message("2")])
    ch.close()
    lines = [json.loads(x) for x in (tmp_path / "outbox.jsonl").read_text().splitlines()]
    assert [m["uid"] for m in lines] == ["1", "2"]
