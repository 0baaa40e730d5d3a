"""The webhook channel against a real local HTTP server."""

from __future__ import annotations

from gateway import Faults, Gateway

from c2b.channels import ChannelConfig, Message, make_channel


def _message(uid: str) -> Message:
    return Message(f"key-{uid}", "p", "r", "t", "webhook", uid, "a", f"hello {uid}",
                   {"link": "https://x"}, {"type": "red_packet", "amount": 5})


def test_webhook_posts_json_with_idempotency_key() -> None:
    with Gateway() as gw:
        ch = make_channel("webhook", ChannelConfig(url=gw.url, token="secret"))
        outcomes = [ch.send(_message(str(i))) for i in range(20)]
        ch.close()
    assert all(o.status == "sent" for o in outcomes)
    assert gw.record.requests == 20
    assert set(gw.record.accepted) == {f"key-{i}" for i in range(20)}
    body = gw.record.accepted["key-3"]
    assert body["uid"] == "3" and body["text"] == "hello 3" and body["offer"]["amount"] == 5


def test_webhook_classifies_errors() -> None:
    with Gateway(Faults(error_rate=1.0)) as gw:
        outcome = make_channel("webhook", ChannelConfig(url=gw.url)).send(_message("1"))
    assert outcome.status == "retry" and outcome.reason == "http 503"
    # Nothing listens on port 9: a network error is transient.
    outcome = make_channel("webhook", ChannelConfig(url="http://127.0.0.1:9/x", extra={"timeout": 1})).send(_message("1"))
    assert outcome.status == "retry" and "ConnectionError" in outcome.reason
