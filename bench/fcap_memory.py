"""Benchmark: Redis memory per capped user of the frequency-cap counts, and their cost per message,
the layout growing by levels against the ones before it, in the same run.

The counts of a scope (a business line) are spread over 2,048 buckets per day and per ISO week
(``c2b.delivery.controls.frequency_cap``). What a key costs per field depends on how full it is
(a small hash is a compact listpack, a big one a hash table), so the figure must be measured at
the density a real audience gives. Two layouts, both run here:

- **old** (``bench/fcap_v1.py``, the code before sub-keys): one HASH per bucket-day,
  ``c2b:fcap:{<scope>:<bucket>}:<YYYYMMDD>``; at 10M users ~4,900 fields, a hash table;
- **new**: a bucket-day grows by levels: one key (level 0) until it holds ``LEVEL0_FIELDS`` (448)
  users, then 4 quarter keys (level 2, ``LEVEL2_FIELDS``: 256 each), then ``SUBKEYS`` (32) sub-keys (level 5); all
  listpacks (Redis's default ``hash-max-listpack-entries`` is 512);
- **new/fixed32**: the same code with no room at levels 0 and 2 (both limits 0): every user
  in its sub-key, the layout of 2026-11-28 (32 sub-keys a bucket-day); ``--alt-subkeys 64`` adds
  ``new/fixed64``, the layout before it.

**Memory**, per audience of ``--users`` (default 10M, 1M and 100k): the sample buckets are filled with
exactly the users that many sequential uids put in them (8 of 2,048 at 10M, more at smaller
audiences so that ~40k users are sampled), i.e. keys as full as that audience makes them; one slot
per touch is taken through each layout's ``FrequencyCap`` on an emptied server. Reported:
``MEMORY USAGE <key> SAMPLES 0`` summed over the counts keys (receipts, 1-hour transients, are
deleted first), and the server's ``used_memory`` growth (also counts the expiry entries and the
keyspace's hash tables), per capped user; ratios new / old.

(b) a line with ``per_day`` only: one touch per user (day keys);
(c) ``per_day`` + ``per_week``: one touch (day and week keys);
(d) + ``per_channel`` sms (day, week) and push (day): one SMS and one push per user.

**Cost per message**, ``--messages`` (50k) in flushes of 1,000, old and new alternated
``--repeats`` times (old on database 0, new on database 1 of the same server: the new code reads
old-layout keys as counts to upgrade): ``take_each`` under (c), ``take`` under (b), and the count
of a plan without caps (``take`` without caps: one script per flush). Three spreads: *empty*, every
message a new user over all 2,048 buckets, no counts yet (a flush is ~800 script calls of 1-2
asks, as in a real run; every new-layout message creates its sub-keys); *warm*, the same with
``--warm-users`` (1M) users already counted in every bucket (the keys exist, as through most of a
big run); *dense*, a second touch for the users of the 10M sample (keys as full as at 10M users: a
hash-table lookup against a listpack scan, but a flush then touches 8 old keys and ~450 sub-keys).
Reported: the client's wall time per message (Redis included, one private redis-server) and the
server's CPU per message (``INFO cpu``), medians, ratios new / old.

Usage::

    .venv/bin/python bench/fcap_memory.py [--users 10000000,1000000,100000] [--messages 50000]
        [--repeats 3] [--only memory|cost]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from c2b.delivery.controls import frequency_cap
from c2b.delivery.controls.frequency_cap import (
    BUCKETS,
    LEVEL0_FIELDS,
    LEVEL2_FIELDS,
    QUARTERS,
    SUBKEYS,
    CapRules,
    ChannelCap,
    FrequencyCap,
    fcap_place,
    week_of,
)
from c2b.hashing import shard_index

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import fcap_v1  # noqa: E402
from devtools.servers import RedisServer  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DAY = "20261125"
LAYOUTS: dict[str, Callable[[Any, CapRules], Any]] = {"old": fcap_v1.FrequencyCap, "new": FrequencyCap}
SCENARIOS = {
    "(b) per_day": (CapRules("b", per_day=3), ["push"]),
    "(c) per_day + per_week": (CapRules("c", per_day=3, per_week=10), ["push"]),
    "(d) + per_channel sms (day, week), push (day)": (
        CapRules("d", per_day=3, per_week=10,
                 per_channel=(("push", ChannelCap(2, None)), ("sms", ChannelCap(1, 2)))), ["sms", "push"]),
}


def _sample(users: int, buckets: int) -> list[str]:
    """Return the uids among ``users`` sequential 10-digit uids that fall in buckets 1..``buckets``."""
    return [uid for uid in (str(1_000_000_000 + i) for i in range(users)) if shard_index(uid, BUCKETS) <= buckets]


def _used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def _measure(client: Any, before: int) -> dict[str, Any]:
    keys = list(client.scan_iter(match="c2b:fcap:*", count=1000))
    rcpt = [k for k in keys if k.endswith(b":rcpt")]
    counts = [k for k in keys if not k.endswith(b":rcpt")]
    if rcpt:
        client.delete(*rcpt)
    sizes: list[int] = []
    fields: list[int] = []
    encodings: dict[str, int] = {}
    for i in range(0, len(counts), 1000):
        pipe = client.pipeline(transaction=False)
        for k in counts[i:i + 1000]:
            pipe.memory_usage(k, samples=0)
            pipe.hlen(k)
            pipe.object("encoding", k)
        got = pipe.execute()
        sizes += got[0::3]
        fields += got[1::3]
        for enc in got[2::3]:
            encodings[enc.decode()] = encodings.get(enc.decode(), 0) + 1
    return {"keys": len(counts), "bytes": sum(sizes), "used_memory": _used(client) - before,
            "max_key_bytes": max(sizes), "max_key_fields": max(fields),
            "mean_key_fields": round(statistics.mean(fields), 1), "encodings": encodings}


def _fill(client: Any, layout: str, rules: CapRules, channels: list[str], users: list[str]) -> dict[str, Any]:
    """Fill the counts of ``users`` through ``layout`` (``old``, ``new``, or ``new/fixed<n>``: every
    user in its sub-key, ``n`` of them a bucket-day) on an emptied server; return what they hold."""
    client.flushall()
    name, _, fixed = layout.partition("/")
    if fixed:
        frequency_cap.SUBKEYS = int(fixed.removeprefix("fixed"))
        frequency_cap.LEVEL0_FIELDS = frequency_cap.LEVEL2_FIELDS = 0
    try:
        return _filled(client, LAYOUTS[name](client, rules), channels, users)
    finally:
        frequency_cap.SUBKEYS, frequency_cap.LEVEL0_FIELDS, frequency_cap.LEVEL2_FIELDS = \
            SUBKEYS, LEVEL0_FIELDS, LEVEL2_FIELDS


def _filled(client: Any, fcap: Any, channels: list[str], users: list[str]) -> dict[str, Any]:
    fcap.take_each([(DAY, "warm-up", channels[0])])  # loads the script (its cache is not the counts')
    client.flushall()
    time.sleep(0.2)
    before = _used(client)
    touches = [(DAY, uid, ch) for uid in users for ch in channels]
    for i in range(0, len(touches), 2000):
        assert set(fcap.take_each(touches[i:i + 2000])) == {None}  # every touch counted
    return _measure(client, before)


def memory(client: Any, audiences: list[int], variants: list[str]) -> list[dict[str, Any]]:
    rows = []
    for users in audiences:
        buckets = min(BUCKETS, max(8, -(-BUCKETS * 40_000 // users)))
        sample = _sample(users, buckets)
        for name, (rules, channels) in SCENARIOS.items():
            got = {layout: _fill(client, layout, rules, channels, sample) for layout in [*LAYOUTS, *variants]}
            for layout, m in got.items():
                row = {"audience": users, "buckets": buckets, "scenario": name, "layout": layout,
                       "users": len(sample), **m,
                       "bytes_per_user": round(m["bytes"] / len(sample), 1),
                       "used_per_user": round(m["used_memory"] / len(sample), 1)}
                row["at_audience_MB"] = round(row["used_per_user"] * users / 1e6, 1)
                row["vs_old"] = round(m["bytes"] / got["old"]["bytes"], 3)
                row["used_vs_old"] = round(m["used_memory"] / got["old"]["used_memory"], 3)
                rows.append(row)
                print(f"{users:>11,} {name[:3]} {layout}: {row['bytes_per_user']} B/user (MEMORY USAGE), "
                      f"{row['used_per_user']} B/user (used_memory), {m['keys']:,} keys, max {m['max_key_fields']} "
                      f"fields, {m['encodings']}", flush=True)
    client.flushall()
    return rows


def _cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _time(client: Any, layout: str, rules: CapRules, run: Callable[[Any, list[str]], Any], uids: list[str],
          flush: int) -> tuple[float, float]:
    """Return (wall seconds, server CPU seconds) to put ``uids`` through ``run`` in flushes."""
    fcap = LAYOUTS[layout](client, rules)
    run(fcap, uids[:1])  # script loaded, connection warm
    cpu0, t0 = _cpu(client), time.perf_counter()
    for i in range(1, len(uids), flush):
        run(fcap, uids[i:i + flush])
    return time.perf_counter() - t0, _cpu(client) - cpu0


def _prefill(client: Any, layout: str, users: list[str], scopes: dict[str, bool]) -> None:
    """Write a count of 1 for every user in each scope's day keys (and week keys where the scope
    says so) of ``layout``, directly (HSET of many fields per key), with the keys' TTL; in the new
    layout at the level where its counting would have put them (users in uid order)."""
    week = week_of(DAY)
    keys: dict[str, dict[str, str]] = {}
    held: dict[str, int] = {}  # new layout: level-0 and level-2 keys -> users so far
    for uid in users:
        bucket, sub = fcap_place(uid)
        tail = ""
        if layout != "old":
            for tail in ("", f":q{sub % QUARTERS}", f":{sub}"):
                at = f"{bucket}{tail}"
                room = LEVEL0_FIELDS if tail == "" else LEVEL2_FIELDS
                if held.get(at, 0) < room or tail == f":{sub}":
                    held[at] = held.get(at, 0) + 1
                    break
        for scope, with_week in scopes.items():
            prefix = "c2b:fcap:{" + f"{scope}:{bucket}" + "}"
            keys.setdefault(f"{prefix}:{DAY}{tail}", {})[uid] = "1"
            if with_week:
                keys.setdefault(f"{prefix}:{week}{tail}", {})[uid] = "1"
    items = list(keys.items())
    for i in range(0, len(items), 500):
        pipe = client.pipeline(transaction=False)
        for key, fields in items[i:i + 500]:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, 2 * 86400)
        pipe.execute()


def cost(clients: dict[str, Any], messages: int, repeats: int, flush: int, dense: list[str],
         warm: int, spreads: list[str]) -> list[dict[str, Any]]:
    """Time the three calls old vs new (old on database 0, new on database 1 of one server: the new
    layout must not see the old one's keys, it would read them as counts to upgrade)."""
    kinds: dict[str, tuple[CapRules, Callable[[Any, list[str]], Any]]] = {
        "take_each, per_day + per_week": (
            CapRules("c", per_day=3, per_week=10), lambda f, us: f.take_each([(DAY, u, "push") for u in us])),
        "take, per_day": (CapRules("b", per_day=3), lambda f, us: f.take([(DAY, u, 1) for u in us])),
        "count without caps (one script per flush)": (
            CapRules("-"), lambda f, us: f.take([(DAY, u, "push", 1) for u in us])),
    }
    rows = []
    for spread in spreads:
        if spread == "warm":
            for layout, client in clients.items():
                client.flushdb(asynchronous=True)
                t0 = time.perf_counter()
                _prefill(client, layout, [str(1_000_000_000 + i) for i in range(warm)], {"c": True, "b": False,
                                                                                         "-": False})
                print(f"prefilled {layout} with {warm:,} users in {time.perf_counter() - t0:.1f} s", flush=True)
        for kind, (rules, run) in kinds.items():
            got: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
            for rep in range(repeats):
                for layout in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                    client = clients[layout]
                    if spread != "warm":
                        client.flushdb(asynchronous=True)  # a big database: freed in the background
                    if spread in ("empty", "warm"):
                        uids = [str(3_000_000_000 + rep * messages + i) for i in range(messages + 1)]
                    else:  # the 10M sample, already touched once: keys as full as at 10M users
                        pre = LAYOUTS[layout](client, rules)
                        for i in range(0, len(dense), 2000):
                            run(pre, dense[i:i + 2000])
                        uids = (dense * (1 + messages // len(dense)))[:messages + 1]
                    got[layout].append(_time(client, layout, rules, run, uids, flush))
            n = len(uids) - 1
            per = {layout: (statistics.median(w for w, _ in v) / n * 1e6, statistics.median(c for _, c in v) / n * 1e6)
                   for layout, v in got.items()}
            row = {"spread": spread, "kind": kind, "messages": n,
                   "old_wall_us": round(per["old"][0], 1), "new_wall_us": round(per["new"][0], 1),
                   "old_redis_cpu_us": round(per["old"][1], 1), "new_redis_cpu_us": round(per["new"][1], 1),
                   "wall_ratio": round(per["new"][0] / per["old"][0], 2),
                   "cpu_ratio": round(per["new"][1] / per["old"][1], 2) if per["old"][1] else None}
            rows.append(row)
            print(f"{spread} {kind}: {row}", flush=True)
    for client in clients.values():
        client.flushdb(asynchronous=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="10000000,1000000,100000", help="audiences whose density is measured")
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--flush", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm-users", type=int, default=1_000_000, help="users already counted in the warm timing")
    ap.add_argument("--only", choices=["memory", "cost"], help="run one part (the other's results are kept)")
    ap.add_argument("--spreads", default="empty,warm,dense", help="the cost part's spreads (others' rows are kept)")
    ap.add_argument("--alt-subkeys", default="", help="other fixed sub-key counts whose memory is measured too "
                    "(besides 32), e.g. 64")
    args = ap.parse_args()
    audiences = [int(u) for u in args.users.split(",")]
    load_before = os.getloadavg()[0]
    version = listpack = "?"
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = server.client()
            version = client.info("server")["redis_version"]
            listpack = client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"]
            mem = [] if args.only == "cost" else \
                memory(client, audiences, [f"new/fixed{n}" for n in ["32", *args.alt_subkeys.split(",")] if n])
            costs = [] if args.only == "memory" else \
                cost({"old": client, "new": redis.Redis.from_url(server.url + "/1")}, args.messages,
                     args.repeats, args.flush, _sample(10_000_000, 8), args.warm_users, args.spreads.split(","))
        finally:
            server.stop()
    load_after = os.getloadavg()[0]
    head = (f"One private redis-server {version} (default config: hash-max-listpack-entries {listpack}); Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs shared (load {load_before:.2f} before, "
            f"{load_after:.2f} after).")
    data: dict[str, Any] = {"subkeys": SUBKEYS, "level_fields": [LEVEL0_FIELDS, LEVEL2_FIELDS]}
    if args.only and (RESULTS / "fcap_memory.json").exists():  # one part again: keep the other one's figures
        data = {**json.loads((RESULTS / "fcap_memory.json").read_text()), **data}
    if args.only != "cost":
        data.update(memory=mem, memory_head=head)
    if args.only != "memory":
        rerun = args.spreads.split(",")
        kept = [r for r in data.get("cost", []) if r["spread"] not in rerun]
        heads = {k: v for k, v in data.get("cost_heads", {}).items() if k not in rerun}
        data.update(cost=kept + costs, cost_heads={**heads, **{sp: head for sp in rerun}},
                    cost_setup=[args.messages, args.flush, args.repeats, args.warm_users],
                    cost_new_layout=f"levels ({LEVEL0_FIELDS} users at level 0, 4 x {LEVEL2_FIELDS} at level 2, "
                                    f"then {SUBKEYS} sub-keys)")
    text = render(data)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fcap_memory.md").write_text(text)
    (RESULTS / "fcap_memory.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


def render(data: dict[str, Any]) -> str:
    lines = ["# Frequency-cap counts: memory per capped user and cost per message (`bench/fcap_memory.py`)", "",
             "old: one hash per bucket-day (`bench/fcap_v1.py`, the code before sub-keys); new: a bucket-day (and "
             f"bucket-week) grows by levels: 1 key until it holds {data.get('level_fields', ['?'])[0]} users, then 4 "
             f"(of {data.get('level_fields', ['?', '?'])[1]} users each), then "
             f"{data['subkeys']} sub-keys; new/fixed<n>: every user in its sub-key, n a bucket-day (the layouts "
             "before: 32 on 2026-11-28, 64 before; memory only).", "",
             "## Memory", "", data.get("memory_head", "(not measured)"), "",
             "Sample buckets filled with exactly the users that many sequential 10-digit uids put there (keys as "
             "full as at that audience). B/user: `MEMORY USAGE` summed over the counts keys / users; used_memory: "
             "the server's growth / users (adds expiry entries and the keyspace tables); at audience: used_memory "
             "per user x audience.", "",
             "| audience | scenario | layout | users sampled | keys | fields per key (mean / max) | encoding | "
             "B/user | vs old | used_memory B/user | vs old | at audience |",
             "| ---: | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data.get("memory", []):
        enc = ", ".join(f"{k} {v:,}" for k, v in sorted(r["encodings"].items()))
        lines.append(f"| {r['audience']:,} | {r['scenario']} | {r['layout']} | {r['users']:,} | {r['keys']:,} | "
                     f"{r['mean_key_fields']} / {r['max_key_fields']:,} | {enc} | {r['bytes_per_user']} | "
                     f"{r['vs_old']:.2f} | {r['used_per_user']} | {r['used_vs_old']:.2f} | "
                     f"{r['at_audience_MB']:,} MB |")
    messages, flush, repeats, warm = data.get("cost_setup", [0, 0, 0, 0])
    lines += ["", "## Cost per message", "",
              f"new here: {data.get('cost_new_layout', '?')}.", "",
              *(f"{spread}: {head}" for spread, head in data.get("cost_heads", {}).items()), "",
              f"{messages:,} messages in flushes of {flush:,}, old and new alternated {repeats} times (medians), "
              "old on database 0 and new on database 1 of one server. empty: a new user per message over all "
              f"buckets, no counts yet (every new-layout message creates its sub-keys); warm: the same with {warm:,} "
              "users already counted in every bucket (keys exist, as in a big run); dense: the users of the 10M "
              "sample of 8 buckets again (keys as full as at 10M users; a flush then touches 8 old keys but ~450 "
              "sub-keys, which the other spreads do not). Wall: the client's time per message, Redis included; "
              "Redis CPU: the server's user+sys CPU per message.", "",
              "| spread | call | old wall us | new wall us | wall new/old | old Redis CPU us | new Redis CPU us "
              "| CPU new/old |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in data.get("cost", []):
        lines.append(f"| {r['spread']} | {r['kind']} | {r['old_wall_us']} | {r['new_wall_us']} | {r['wall_ratio']} | "
                     f"{r['old_redis_cpu_us']} | {r['new_redis_cpu_us']} | {r['cpu_ratio']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
