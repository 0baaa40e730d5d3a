"""Benchmark: CPU per message of turning a page of uids into outbox lines, before and after.

One process, the same plan, users and attributes, measured in the same run:

(a) reference: the per-message path as it was (kept here verbatim as the baseline): a variant by
    ``mmh3`` per uid, an ``Item`` per (touch, uid) with an f-string field, the values dict per
    message, the Jinja render, ``idempotency_key`` from scratch, a copy of the touch's assets,
    ``Message(...)``, ``json.dumps(message.to_json(), ensure_ascii=False)``;
(b) ours: ``WorkBuilder.page`` + ``WorkBuilder.messages`` (a page's messages rendered as one batch per
    touch, as the delivery does) + the outbox channel's line.

Both must write the same lines (checked). Plans: the e2e touch ``Hi {{ nickname }}, ...`` alone,
and a 2-variant experiment whose second touch has assets, an offer and ``{{ offer.amount }}``.
No Redis, no I/O: only the CPU this path costs. Usage::

    .venv/bin/python bench/message_path.py [--users 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import mmh3
from c2b.channels import ChannelConfig, make_channel
from c2b.channels.base import Message
from c2b.delivery.controls.quiet_hours import SendWindow
from c2b.delivery.work import Item, WorkBuilder, idempotency_key
from c2b.plan.template_limits import BoundedTemplate
from c2b.plan.templates import compile_template

from devtools.deliverkit import make_plan

OUT = Path(__file__).parent / "results"
HELLO = {"name": "hello", "channel": "outbox", "template": "Hi {{ nickname }}, a new quote is waiting for you."}
COUPON = {"name": "coupon", "channel": "outbox",
          "template": "{{ nickname }}, +{{ offer.amount }} for you: {{ assets.link }}",
          "assets": {"link": "https://example.com/sell", "image": "https://example.com/a.png"},
          "offer": {"type": "price_up_coupon", "amount": 30}}


def plans() -> dict[str, Any]:
    base = {"id": "e2e_outbox", "audience": {"segment": "x.sql"}, "touches": [HELLO],
            "delivery": {"shards": 1, "page_size": 1000, "concurrency": 16}}
    two = {**base, "touches": [HELLO, COUPON], "experiment": {"salt": "ab-1", "variants": {
        "a": {"weight": 50, "touches": ["hello"]}, "b": {"weight": 50, "touches": ["coupon"]}}}}
    return {"1 variant": make_plan(base), "2 variants": make_plan(two)}


def reference_lines(b: WorkBuilder, uids: list[str], attrs: dict[str, dict[str, Any]]) -> list[str]:
    """The path before the per-message shortcuts (one page, every item rendered and written)."""
    plan = b.plan
    weights = plan.variant_weights
    prefix, total = plan.salt.encode("utf-8", "replace") + b":", sum(weights.values())
    bounds, acc = [], 0
    for name in sorted(weights):
        acc += weights[name]
        if weights[name]:
            bounds.append((acc, name))
    jinja = {t.name: BoundedTemplate(compile_template(t.template), b.templates[t.name].max_chars, "outbox")
             for t in plan.touches}
    lines = []
    for uid in uids:
        bucket = mmh3.hash(prefix + uid.encode("utf-8", "replace"), 0, False) % total
        variant = next(n for bound, n in bounds if bucket < bound)
        for t in b.touches_by_variant[variant]:
            it = Item(f"{t.name}|{uid}", variant, t.name, uid, "2026-01-01", 0, channel=t.channel)
            offer = b.offers[t.name]
            values = {**attrs[uid], "uid": it.uid, "variant": it.variant, "offer": offer or {},
                      "assets": t.assets, "plan": plan.id, "touch": t.name}
            text = jinja[t.name].render(values)
            m = Message(idempotency_key(plan.id, b.run_id, t.name, it.uid), plan.id, b.run_id, t.name, t.channel,
                        it.uid, it.variant, text, dict(b.assets[t.name]), offer)
            lines.append(json.dumps(m.to_json(), ensure_ascii=False) + "\n")
    return lines


def our_lines(b: WorkBuilder, ch: Any, uids: list[str], attrs: dict[str, dict[str, Any]]) -> list[str]:
    work = b.page(uids, attrs, 0)
    return [ch._line(m) for m in b.messages(work.items, attrs)]  # a page's messages, as the delivery renders them


def cpu_per_message(fn: Any, n: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    import tempfile

    uids = [str(10_000_000 + i) for i in range(args.users)]
    attrs = {u: {"nickname": f"nick{i}", "timezone": "Asia/Shanghai"} for i, u in enumerate(uids)}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        ch = make_channel("outbox", ChannelConfig(run_dir=d))
        for label, plan in plans().items():
            b = WorkBuilder(plan, "run1", SendWindow.of(plan.window), time.time,
                            channels={t.name: ch for t in plan.touches})
            pages = [uids[i:i + 1000] for i in range(0, len(uids), 1000)]
            ref = [ln for p in pages for ln in reference_lines(b, p, attrs)]
            ours = [ln for p in pages for ln in our_lines(b, ch, p, attrs)]
            assert ref == ours, f"{label}: the lines differ"
            before = cpu_per_message(lambda b=b, pages=pages: [reference_lines(b, p, attrs) for p in pages],
                                     len(ref), args.repeat)
            after = cpu_per_message(lambda b=b, pages=pages: [our_lines(b, ch, p, attrs) for p in pages],
                                    len(ours), args.repeat)
            rows.append({"plan": label, "messages": len(ref), "reference_us": round(before, 2),
                         "ours_us": round(after, 2), "ratio": round(before / after, 1)})
            print(rows[-1])
        ch.close()
    result = {"machine": platform.platform(), "python": platform.python_version(), "users": args.users,
              "repeat": args.repeat, "rows": rows}
    (OUT / "message_path.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Per-message CPU: page of uids -> outbox lines (bench/message_path.py)", "",
          f"{args.users:,} users, best of {args.repeat}, process CPU per message, same run; {result['machine']}.", "",
          "| plan | messages | reference µs/msg | ours µs/msg | ratio |", "|---|---|---|---|---|"]
    md += [f"| {r['plan']} | {r['messages']:,} | {r['reference_us']} | {r['ours_us']} | {r['ratio']}x |" for r in rows]
    (OUT / "message_path.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
