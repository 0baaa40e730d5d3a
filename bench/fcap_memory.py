"""Benchmark: Redis memory per capped user of the frequency-cap counts, at 10M-user density.

The counts of a scope (a business line) are spread over 2,048 buckets per day and per ISO week
(``c2b.delivery.controls.frequency_cap``). What a key costs per field depends on how full it is
(a small hash is a compact listpack, a big one a hash table), so the figure must be measured at
the density a real audience gives: at 10M users touched, each key holds 10M / 2,048 ~ 4,900 users.
This fills ``--buckets`` sample buckets with exactly the users that 10M sequential uids put in them
(``--users`` candidates hashed), takes one slot per touch through :class:`FrequencyCap`, and
sums ``MEMORY USAGE <key> SAMPLES 0`` over every counts key (receipts are 1-hour transients,
reported apart). Measured in one run on one private redis-server:

(a) baseline: the layout before business lines (one HINCRBY per touch into
    ``c2b:fcap:{<day>:<bucket>}``, 1,024 buckets, one day key), same users;
(b) a line with ``per_day`` only: one touch per user (a day key);
(c) ``per_day`` + ``per_week``: one touch (a day key and a week key);
(d) ``per_day`` + ``per_week`` + ``per_channel`` sms (day, week) and push (day): one SMS and one
    push per user (the channels ride in the field's value: still one field per key).

Reported: bytes per capped user, the ratio to (a), the largest key's fields and bytes, and the
projection to 10M users. Usage::

    .venv/bin/python bench/fcap_memory.py [--users 10000000] [--buckets 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from c2b.delivery.controls.frequency_cap import BUCKETS, CapRules, ChannelCap, FrequencyCap
from c2b.hashing import shard_index

from devtools.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DAY = "20261125"


def _sample(users: int, buckets: int, of: int) -> list[str]:
    """Return the uids among ``users`` sequential 10-digit uids that fall in buckets 1..``buckets`` of ``of``."""
    return [uid for uid in (str(1_000_000_000 + i) for i in range(users)) if shard_index(uid, of) <= buckets]


def _measure(client: Any, match: str) -> dict[str, Any]:
    keys = [k for k in client.scan_iter(match=match, count=1000)]
    counts = [k for k in keys if not k.endswith(b":rcpt")]
    sizes = {k: client.memory_usage(k, samples=0) for k in counts}
    fields = {k: client.hlen(k) for k in counts}
    rcpt = sum(client.memory_usage(k, samples=0) for k in keys if k.endswith(b":rcpt"))
    return {"keys": len(counts), "bytes": sum(sizes.values()), "max_key_bytes": max(sizes.values()),
            "max_key_fields": max(fields.values()), "receipt_bytes": rcpt,
            "encodings": sorted({client.object("encoding", k).decode() for k in counts})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000_000, help="the audience whose density is measured")
    ap.add_argument("--buckets", type=int, default=8, help="sample buckets filled (of 2,048)")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    new_users = _sample(args.users, args.buckets, BUCKETS)
    old_users = _sample(args.users, args.buckets // 2 or 1, 1024)  # the same share of the audience
    scenarios = {
        "(b) per_day": (CapRules("b_day", per_day=3), ["push"]),
        "(c) per_day + per_week": (CapRules("c_week", per_day=3, per_week=10), ["push"]),
        "(d) + per_channel sms (day, week), push (day)": (
            CapRules("d_chan", per_day=3, per_week=10,
                     per_channel=(("push", ChannelCap(2, None)), ("sms", ChannelCap(1, 2)))), ["sms", "push"]),
    }
    rows: list[dict[str, Any]] = []
    version = "?"
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = server.client()
            version = client.info("server")["redis_version"]
            pipe = client.pipeline(transaction=False)
            for uid in old_users:
                pipe.hincrby("c2b:fcap:{" + f"{DAY}:{shard_index(uid, 1024)}" + "}", uid, 1)
            pipe.execute()
            base = _measure(client, "c2b:fcap:{" + DAY + ":*")
            rows.append({"layout": "(a) before lines: day key, 1,024 buckets", "users": len(old_users), **base})
            for name, (rules, channels) in scenarios.items():
                fcap = FrequencyCap(client, rules)
                touches = [(DAY, uid, ch) for uid in new_users for ch in channels]
                for i in range(0, len(touches), 2000):
                    assert set(fcap.take_each(touches[i:i + 2000])) == {None}  # every touch counted
                rows.append({"layout": name, "users": len(new_users),
                             **_measure(client, "c2b:fcap:{" + rules.scope + ":*")})
        finally:
            server.stop()
    base_per_user = rows[0]["bytes"] / rows[0]["users"]
    for r in rows:
        r["bytes_per_user"] = round(r["bytes"] / r["users"], 1)
        r["vs_a"] = round(r["bytes_per_user"] / base_per_user, 2)
        r["at_10M_users_MB"] = round(r["bytes_per_user"] * 10_000_000 / 1e6)
    load_after = os.getloadavg()[0]
    head = (f"{args.users:,} sequential 10-digit uids hashed; {len(new_users):,} of them fill {args.buckets} of "
            f"{BUCKETS:,} buckets ({len(old_users):,} fill {args.buckets // 2 or 1} of 1,024 for (a)), i.e. keys as "
            f"full as at {args.users:,} users touched; one private redis-server {version}; Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs shared (load {load_before:.2f} before, "
            f"{load_after:.2f} after).")
    lines = ["# Frequency-cap counts: memory per capped user (`bench/fcap_memory.py`)", "", head, "",
             "| layout | users | bytes per user | vs (a) | largest key: fields | largest key: bytes | encoding "
             "| at 10M users |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['users']:,} | {r['bytes_per_user']:,} | {r['vs_a']:.2f} | "
                     f"{r['max_key_fields']:,} | {r['max_key_bytes']:,} | {', '.join(r['encodings'])} | "
                     f"{r['at_10M_users_MB']:,} MB |")
    lines += ["", "Receipts (`...:rcpt`, 1-hour TTL, about one per running caller and bucket-day) are not in the "
                  "figures: " + ", ".join(f"{r['layout'][:3]} {r['receipt_bytes']:,} bytes" for r in rows[1:]) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fcap_memory.md").write_text(text)
    (RESULTS / "fcap_memory.json").write_text(json.dumps({"head": head, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
