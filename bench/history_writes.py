"""Benchmark: what a flush of sent messages costs in the contact and re-entry histories.

Writes ``--messages`` integer uids, ``--flush`` at a time, through the delivery's recorder
(``reentry.record_sends(plan, contacts.record_contacts)``: the cross-plan contacts and the plan's
re-entry history), on a fresh redis-server whose two histories are first filled as if ``--fill``
users were recorded (random 10-byte records in every bucket: at 10M users ~610 a bucket,
~6 KB). Prints Redis CPU (``INFO cpu``) and process CPU per message, and the script calls.

Run it on two checkouts in the same session to compare (``PYTHONPATH=<other>/plugins``)::

    .venv/bin/python bench/history_writes.py [--fill 0] [--messages 64000] [--flush 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import c2b
import redis
from c2b.delivery import contacts, reentry
from c2b.plan.load import parse_plan

from devtools.servers import RedisServer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fill", type=int, default=0)
    parser.add_argument("--messages", type=int, default=64_000)
    parser.add_argument("--flush", type=int, default=64)
    args = parser.parse_args()
    plan = parse_plan({"id": "bench_hist", "audience": {"segment": "x.sql"}, "reentry": {"after_days": 30},
                       "touches": [{"name": "t", "channel": "outbox", "template": "hi"}]}, "bench_hist.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            r = redis.Redis(port=server.port)
            per = args.fill // contacts.BUCKETS
            if per:
                pipe = r.pipeline(transaction=False)
                for b in range(1, contacts.BUCKETS + 1):
                    pipe.set(contacts.bucket_key(b), os.urandom(10 * per))
                    pipe.set(reentry.bucket_key(plan.id, b), os.urandom(10 * per))
                pipe.execute()
            record = reentry.record_sends(plan, contacts.record_contacts)
            uids = [str(50_000_000 + i) for i in range(args.messages)]
            when = datetime(2026, 6, 15, tzinfo=UTC)
            # Scripts loaded, connections open: with other uids than the measured ones, which must all
            # be new records (a warm-up with the measured uids made the largest flush a rewrite).
            record(r, [str(40_000_000 + i) for i in range(min(args.flush, 1000))], when)

            def cpu() -> float:
                info = r.info("cpu")
                return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

            r.config_resetstat()
            c0, p0 = cpu(), time.process_time()
            for i in range(0, len(uids), args.flush):
                record(r, uids[i:i + args.flush], when)
            redis_us = (cpu() - c0) / len(uids) * 1e6
            process_us = (time.process_time() - p0) / len(uids) * 1e6
            stats = r.info("commandstats")
            calls = {k[8:]: v["calls"] for k, v in stats.items() if k in ("cmdstat_eval", "cmdstat_evalsha")}
        finally:
            server.stop()
    print(f"{Path(c2b.__file__).parents[2]}: fill {args.fill:,} ({per} records a bucket), {args.messages:,} messages "
          f"in flushes of {args.flush}: Redis {redis_us:.1f} us/msg, process {process_us:.1f} us/msg, calls {calls}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
