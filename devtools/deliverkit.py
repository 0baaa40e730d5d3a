"""Helpers for delivery tests: plans, loaded shards, and a shard run in its own process.

``python -m devtools.deliverkit SPEC.json`` runs one shard the way an Airflow worker runs the
``deliver`` task body (``steps.step_deliver`` with real channels, the Redis kill switch and the
real Redis), in its own process, so a test can ``kill -9`` it mid-way and start the retry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def plan_dict(plan_id: str = "p_test", channel: str = "push", touches: int = 1, shards: int = 1,
              page_size: int = 50, concurrency: int = 16, control: int = 0, **delivery: Any) -> dict[str, Any]:
    """A plan with ``touches`` touches on ``channel`` (each with an offer) and an optional control arm."""
    ts = [{"name": f"t{i}", "channel": channel, "template": "Hi {{ uid }}: +{{ offer.amount | int }} for you",
           "assets": {"link": "https://example.com/x", "title": "Sell now"},
           "offer": {"type": "price_up_coupon", "amount": 10 + i}} for i in range(touches)]
    plan: dict[str, Any] = {
        "id": plan_id, "audience": {"segment": "x.sql"}, "touches": ts,
        "delivery": {"shards": shards, "page_size": page_size, "concurrency": concurrency, **delivery}}
    if control:
        plan["experiment"] = {"salt": "s", "variants": {
            "treat": {"weight": 100 - control, "touches": [t["name"] for t in ts]},
            "control": {"weight": control, "control": True}}}
    return plan


def make_plan(data: dict[str, Any]):  # -> Plan
    from c2b.plan.load import parse_plan

    return parse_plan(data, "<test>")


def load_audience(redis: Any, plan: Any, run_id: str, uids: list[str], folder: Path,
                  columns: dict[str, list[Any]] | None = None) -> dict[int, int]:
    """Write a staging Parquet of ``uids`` (+ columns) and load it into the run's shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from c2b.store.shards import load_shards

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{plan.id}-{run_id}.parquet"
    pq.write_table(pa.table({"uid": uids, **(columns or {})}), path)
    return load_shards(redis, path, plan.id, run_id, plan.delivery.shards, list(columns or {})).shards


def expected_keys(plan: Any, run_id: str, uids: list[str]) -> set[str]:
    """Idempotency keys of every message the run should send (targeted users x their touches)."""
    from c2b.delivery.work import idempotency_key
    from c2b.hashing import VariantPicker

    picker = VariantPicker(plan.salt, plan.variant_weights)
    return {idempotency_key(plan.id, run_id, t.name, u) for u in uids
            for t in plan.touches_of(picker.pick(u.encode()))}


def ledger_entries(redis: Any, plan: Any, run_id: str, uids: list[str], shard: int = 1) -> dict[str, str]:
    """Return the shard's ledger as ``{"<touch>|<uid>": state}`` for every entry of ``uids`` x the
    plan's touches that exists (final entries live in outcome records keyed by uid, not in a hash
    one could list, so the caller names the users)."""
    from c2b.delivery.ledger import ShardLedger
    from c2b.store.shards import ShardKeys

    fields = [f"{t.name}|{u}" for u in uids for t in plan.touches]
    states = ShardLedger(redis, ShardKeys(plan.id, run_id, shard)).states(fields)
    return {f: st for f, st in zip(fields, states, strict=True) if st is not None}


def spec(redis_url: str, plan: dict[str, Any], run_id: str, shard: int, url: str,
         extra: dict[str, Any] | None = None, channel: str | None = None) -> dict[str, Any]:
    return {"redis_url": redis_url, "plan": plan, "run_id": run_id, "shard": shard,
            "url": url, "extra": extra or {}, "channel": channel}


def start_shard(spec_data: dict[str, Any], folder: Path, name: str = "shard") -> subprocess.Popen:
    """Start one shard's delivery in a new Python process (stdout: its stats as JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / f"{name}.json"
    spec_file.write_text(json.dumps(spec_data))
    log = (folder / f"{name}.log").open("a")
    return subprocess.Popen([sys.executable, "-m", "devtools.deliverkit", str(spec_file)], stdout=subprocess.PIPE,
                            stderr=log, text=True)


def run_shard_process(spec_file: str) -> int:
    """Body of the child process: one ``step_deliver`` call, stats printed as JSON."""
    import logging

    import redis
    from c2b import steps
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.controls.kill_switch import KillSwitch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    s = json.loads(Path(spec_file).read_text())
    client = redis.Redis.from_url(s["redis_url"])
    if s.get("plan_file"):  # a plan file in a business-line folder: the line's settings apply
        from c2b.plan.lines import with_line
        from c2b.plan.load import load_plan

        plan = with_line(load_plan(s["plan_file"], check_files=False), s["plan_file"])
    else:
        plan = make_plan(s["plan"])
    channels = {t.name: make_channel(s.get("channel") or t.channel,
                                     ChannelConfig(url=s["url"], extra=s["extra"], conn_id=f"test_{t.channel}",
                                                   redis=client))
                for t in plan.touches}
    if s.get("gate"):  # start together with other processes: say ready, wait for the test to open the gate
        import time

        client.incr(f"{s['gate']}:ready")
        deadline = time.monotonic() + 120
        while not client.exists(s["gate"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    stats = steps.step_deliver(plan, s["run_id"], s["shard"], client, channels, KillSwitch(client, plan.id))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_shard_process(sys.argv[1]))
