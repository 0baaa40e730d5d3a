"""A valid plan as data, and helpers to mutate it, shared by the plan tests."""

from __future__ import annotations

import copy
import re
from typing import Any

_MISSING = object()


def base_plan() -> dict[str, Any]:
    """Return a valid plan touching every part of the language (segment from the repo library)."""
    return {
        "id": "sample_plan",
        "description": "Cancelled for price: coupon push vs red packet SMS, with a control group.",
        "owner": "c2b-ops",
        "tags": ["cancellation"],
        "schedule": "@daily",
        "start_date": "2026-01-01",
        "window": {"start": "2026-01-01", "end": "2026-12-31", "send_hours": "09:00-21:00",
                   "timezone": "Asia/Shanghai"},
        "audience": {
            "segment": "cancelled_for_reason.sql",
            "params": {"reason": "price_too_low", "days": 30},
            "exclude": [{"suppression_list": "marketing_opt_outs"}, {"contacted_within_days": 3}],
            "limit": 10000,
        },
        "experiment": {
            "salt": "sample-2026",
            "variants": {
                "coupon": {"weight": 40, "touches": ["coupon_push"]},
                "red_packet": {"weight": 40, "touches": ["red_packet_sms"]},
                "control": {"weight": 20, "control": True},
            },
        },
        "touches": [
            {"name": "coupon_push", "channel": "push", "connection": "c2b_push",
             "template": "{{ nickname }} in {{ city }}: +{{ offer.amount | int }} {{ offer.currency }}",
             "assets": {"link": "https://example.com/sell", "image": "https://example.com/a.png"},
             "offer": {"type": "price_up_coupon", "amount": 30}},
            {"name": "red_packet_sms", "channel": "sms", "connection": "c2b_sms",
             "template": "{{ nickname }}, a red packet: {{ assets.link }}",
             "assets": {"link": "https://example.com/rp"},
             "offer": {"type": "red_packet", "amount": 20, "currency": "CNY"}},
        ],
        "delivery": {"shards": 16, "page_size": 100, "concurrency": 16, "rate_limit": 100, "retries": 2,
                     "retry_delay_seconds": 5, "retry_backoff": 2.0, "frequency_cap": 2, "key_ttl_hours": 48},
    }


_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def mutate(data: dict[str, Any], path: str, value: Any = _MISSING) -> dict[str, Any]:
    """Return a copy of ``data`` with ``path`` (``touches[0].offer.amount``) set, or deleted."""
    out = copy.deepcopy(data)
    parts = [int(i) if i else k for i, k in _PART.findall(path)]
    node: Any = out
    for part in parts[:-1]:
        if isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node[part]
    if value is _MISSING:
        node.pop(parts[-1], None) if isinstance(node, dict) else node.pop(parts[-1])
    else:
        node[parts[-1]] = value
    return out


DELETE = _MISSING
