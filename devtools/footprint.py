"""Measure what a Redis server holds, by key family: the bench's and the footprint test's yardstick.

Families are named after the key layout (``docs/audience-store.md``): the run's own keys (ledger,
outcome records, stats, checkpoint, audience...) and the cross-run state (contacts, re-entry
history, frequency-cap counts). ``MEMORY USAGE`` gives bytes (key, value and allocator overhead);
elements are a collection's members (a string counts as one).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

CROSS_RUN = ("contacts", "reentry", "fcap")
_FAMILIES = [
    (re.compile(r"^c2b:contacts:"), "contacts"),
    (re.compile(r"^c2b:reentry:"), "reentry"),
    (re.compile(r"^c2b:fcap:"), "fcap"),
    (re.compile(r"^c2b:budget:"), "budgets"),
    (re.compile(r"^c2b:(rl|rate)"), "rate_limits"),
    (re.compile(r"^c2b:inbox"), "inboxes"),
    (re.compile(r":out:\d+$"), "ledger_records"),
    (re.compile(r":pg:\d+:\d+$"), "ledger_pages"),
    (re.compile(r":pages$"), "ledger_pages"),
    (re.compile(r":ledger$"), "ledger"),
    (re.compile(r":codes$"), "ledger_codes"),
    (re.compile(r":ledgers$"), "ledger_codes"),
    (re.compile(r":stats$"), "stats"),
    (re.compile(r":ckpt$"), "ckpt"),
    (re.compile(r":rcpt$"), "receipts"),
    (re.compile(r":deferred$"), "deferred"),
    (re.compile(r":meta$"), "meta"),
    (re.compile(r":pk$"), "audience_packed"),
    (re.compile(r":aud$"), "audience_zset"),
    (re.compile(r":attrs(:c?\d+)?$"), "attrs"),  # c<n>: a position chunk; <n>: a format-2 hash
]
_SIZE = {"string": "strlen", "hash": "hlen", "zset": "zcard", "set": "scard", "list": "llen"}


def family(key: str) -> str:
    for pattern, name in _FAMILIES:
        if pattern.search(key):
            return name
    return "other:" + key.split("{")[0]


def measure(redis: Any) -> dict[str, Any]:
    """Every key of the server by family: keys, bytes (MEMORY USAGE), elements, largest keys."""
    keys = [k.decode() for k in redis.scan_iter(count=2000)]
    fams: dict[str, dict[str, Any]] = defaultdict(lambda: {"keys": 0, "bytes": 0, "elements": 0,
                                                            "largest_bytes": None, "largest_elements": None,
                                                            "max_ttl": -2})
    for i in range(0, len(keys), 2000):
        chunk = keys[i:i + 2000]
        pipe = redis.pipeline(transaction=False)
        for k in chunk:
            pipe.type(k)
        kinds = [t.decode() for t in pipe.execute()]
        pipe = redis.pipeline(transaction=False)
        for k, kind in zip(chunk, kinds, strict=True):
            pipe.memory_usage(k, samples=0)
            getattr(pipe, _SIZE.get(kind, "exists"))(k)
            pipe.ttl(k)
        answers = pipe.execute()
        for j, (k, kind) in enumerate(zip(chunk, kinds, strict=True)):
            nbytes, size, ttl = int(answers[3 * j] or 0), int(answers[3 * j + 1] or 0), int(answers[3 * j + 2])
            elements = 1 if kind == "string" else size  # a string is one element (its bytes are in nbytes)
            f = fams[family(k)]
            f["keys"] += 1
            f["bytes"] += nbytes
            f["elements"] += elements
            f["max_ttl"] = max(f["max_ttl"], ttl)
            if f["largest_bytes"] is None or nbytes > f["largest_bytes"]["bytes"]:
                f["largest_bytes"] = {"key": k, "type": kind, "bytes": nbytes, "elements": elements}
            if f["largest_elements"] is None or elements > f["largest_elements"]["elements"]:
                f["largest_elements"] = {"key": k, "type": kind, "bytes": nbytes, "elements": elements}
    used = int(redis.info("memory")["used_memory"])
    return {"used_memory": used, "keys": len(keys), "families": dict(fams)}
