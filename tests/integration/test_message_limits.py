"""A message over its channel's limit is recorded failed with the reason, never sent (#11.6)."""

from __future__ import annotations

import time
from pathlib import Path

from devtools.deliverkit import load_audience, make_plan, plan_dict
from devtools.gateway import Gateway


def test_sms_over_its_limit_or_a_huge_repeat_fails_with_a_reason_and_is_not_sent(redis_client, tmp_path: Path) -> None:
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.shard import idempotency_key

    data = plan_dict("p_limits", channel="sms")
    data["touches"][0]["template"] = "{{ nickname * n }}"
    plan = make_plan(data)
    users = [f"m{i}" for i in range(10)]
    nicknames = ["Ann"] * 10
    repeat = [1] * 10
    nicknames[3] = "y" * 501  # one character over an SMS (SmsChannel.max_text_chars)
    nicknames[5], repeat[5] = "x", 5_000_000              # 'x' * 5000000: a 5 MB "SMS"
    load_audience(redis_client, plan, "r1", users, tmp_path, {"nickname": nicknames, "n": repeat})
    with Gateway() as gw:
        channels = {t.name: make_channel("sms", ChannelConfig(url=gw.url, conn_id="t")) for t in plan.touches}
        started = time.monotonic()
        stats = steps.step_deliver(plan, "r1", 1, redis_client, channels, lambda: False)
        took = time.monotonic() - started
        accepted = set(gw.record.accepted)
    over = {idempotency_key(plan.id, "r1", "t0", u) for u in ("m3", "m5")}
    assert not over & accepted, "a message over the limit reached the gateway"
    assert len(accepted) == 8 and stats["counts"] == {"all|t0|sent": 8, "all|t0|failed": 2}
    reasons = " / ".join(stats["failures"])
    assert "over the sms limit of 500 characters" in reasons and "would build 5000000 items" in reasons, reasons
    assert took < 10
