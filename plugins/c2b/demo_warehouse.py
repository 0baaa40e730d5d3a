"""Generate the demo warehouse: a DuckDB file with the C2B team's kinds of data, from a fixed seed.

Tables: users (acquisition channel tag, timezone, opt-out), orders, order_cancellations (with the
reason that drives a follow-up), order_ratings and surveys (explicit data), cs_feedback and nps
(implicit data), warehouse_info. Dates are relative to ``as_of`` (default today) over the last 180
days, so "cancelled in the last 30 days" segments always find users. Same seed and as_of give the
same data. Columns are built with numpy in chunks of users and appended through Arrow, so 10M
users fit in bounded memory.

``python -m c2b.demo_warehouse --path data/warehouse.duckdb --users 200000 --seed 42``
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK_USERS = 1_000_000
DAYS = 180
FIRST_UID = 1_000_000_000

CHANNELS = (["app_store", "search_ad", "douyin_ad", "wechat_share", "offline_store", "partner_referral"],
            [0.30, 0.22, 0.20, 0.15, 0.08, 0.05])
TIMEZONES = (["Asia/Shanghai", "Asia/Urumqi", "Asia/Hong_Kong", "America/Los_Angeles", "Europe/London"],
             [0.90, 0.04, 0.03, 0.02, 0.01])
CITIES = (["Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Hangzhou", "Chengdu", "Wuhan", "Nanjing",
           "Xi'an", "Chongqing", "Tianjin", "Suzhou", "Changsha", "Zhengzhou", "Qingdao"],
          [0.14, 0.13, 0.11, 0.10, 0.08, 0.07, 0.06, 0.06, 0.05, 0.05, 0.04, 0.04, 0.03, 0.02, 0.02])
CATALOG = {  # category -> (items, min price, max price)
    "phone": (["iPhone 13", "iPhone 14 Pro", "Huawei P60", "Xiaomi 13", "OPPO Find X6"], 800, 6000),
    "laptop": (["MacBook Air M2", "ThinkPad X1", "Huawei MateBook 14", "Dell XPS 13"], 1500, 9000),
    "tablet": (["iPad Air", "iPad Pro 11", "Xiaomi Pad 6"], 600, 5000),
    "camera": (["Sony A7 III", "Canon R6", "Fujifilm X-T4"], 2000, 12000),
    "watch": (["Apple Watch S8", "Huawei Watch 4"], 300, 2500),
    "console": (["Nintendo Switch", "PlayStation 5"], 900, 3000),
    "luxury_bag": (["LV Neverfull", "Gucci Marmont", "Chanel Classic Flap"], 3000, 40000),
}
CATEGORY_WEIGHTS = [0.40, 0.18, 0.14, 0.08, 0.08, 0.07, 0.05]
CANCEL_REASONS = (["price_too_low", "data_privacy_worry", "changed_mind", "slow_pickup", "other"],
                  [0.40, 0.15, 0.25, 0.10, 0.10])
ORDER_STATUS = (["completed", "cancelled", "in_progress"], [0.65, 0.25, 0.10])
CS_TOPICS = (["price", "privacy", "logistics", "inspection", "refund", "other"], [0.30, 0.12, 0.20, 0.18, 0.10, 0.10])
SENTIMENTS = (["negative", "neutral", "positive"], [0.45, 0.35, 0.20])
COMMENTS = ["fast and fair", "quote lower than expected", "courier was late", "smooth", "inspection too strict"]


def _pick(rng: np.random.Generator, choices: tuple[list[str], list[float]], n: int) -> pa.Array:
    """Draw ``n`` labels by weight, as a dictionary-encoded-then-decoded Arrow string array."""
    labels, weights = choices
    idx = rng.choice(len(labels), size=n, p=np.asarray(weights) / sum(weights))
    return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(labels)).cast(pa.string())


def _times(rng: np.random.Generator, n: int, start_us: int, span_days: float) -> pa.Array:
    offs = (rng.random(n) * span_days * 86_400e6).astype(np.int64)
    return pa.array(start_us + offs, pa.timestamp("us"))


def _users(rng: np.random.Generator, uids: np.ndarray, now_us: int) -> pa.Table:
    n = len(uids)
    signup = now_us - (rng.random(n) * 720 * 86_400e6).astype(np.int64)
    active = np.minimum(now_us, signup + (rng.random(n) * (now_us - signup)).astype(np.int64))
    return pa.table({
        "uid": pa.array(uids, pa.int64()),
        "nickname": pa.array([f"user_{u % 1_000_000:06d}" for u in uids.tolist()]),
        "city": _pick(rng, CITIES, n),
        "acquisition_channel": _pick(rng, CHANNELS, n),
        "timezone": _pick(rng, TIMEZONES, n),
        "signup_at": pa.array(signup, pa.timestamp("us")),
        "last_active_at": pa.array(active, pa.timestamp("us")),
        "opted_out": pa.array(rng.random(n) < 0.03),
        "phone": pa.array([f"13{(u * 7919) % 10**9:09d}" for u in uids.tolist()]),
    })


def _orders(rng: np.random.Generator, uids: np.ndarray, first_order_id: int, now_us: int) -> pa.Table:
    per_user = np.minimum(rng.geometric(0.55, len(uids)) - 1, 12)  # most 0-3, heavy tail
    owner = np.repeat(uids, per_user)
    n = len(owner)
    cats = list(CATALOG)
    cat_idx = rng.choice(len(cats), size=n, p=CATEGORY_WEIGHTS)
    items, prices = [], np.empty(n)
    pick = rng.random(n)
    spread = rng.random(n)
    for i, c in enumerate(cat_idx.tolist()):
        names, lo, hi = CATALOG[cats[c]]
        items.append(names[int(pick[i] * len(names))])
        prices[i] = round(lo + spread[i] * (hi - lo), 2)
    return pa.table({
        "order_id": pa.array(np.arange(first_order_id, first_order_id + n), pa.int64()),
        "uid": pa.array(owner, pa.int64()),
        "item": pa.array(items),
        "category": pa.array([cats[c] for c in cat_idx.tolist()]),
        "quoted_price": pa.array(prices).cast(pa.decimal128(10, 2)),
        "status": _pick(rng, ORDER_STATUS, n),
        "created_at": _times(rng, n, now_us - DAYS * 86_400_000_000, DAYS),
    })


def _follow_ups(rng: np.random.Generator, orders: pa.Table, uids: np.ndarray, now_us: int) -> dict[str, pa.Table]:
    status = orders.column("status").to_numpy(zero_copy_only=False)
    created = orders.column("created_at").cast(pa.int64()).to_numpy()
    cancelled = np.flatnonzero(status == "cancelled")
    completed = np.flatnonzero(status == "completed")
    rated = completed[rng.random(len(completed)) < 0.6]
    n_u = len(uids)

    def later(idx: np.ndarray, max_days: float) -> pa.Array:
        t = created[idx] + (rng.random(len(idx)) * max_days * 86_400e6).astype(np.int64)
        return pa.array(np.minimum(t, now_us), pa.timestamp("us"))

    surveyed = uids[rng.random(n_u) < 0.15]
    privacy = uids[rng.random(n_u) < 0.10]
    cs = uids[rng.random(n_u) < 0.12]
    nps_users = uids[rng.random(n_u) < 0.20]
    nps_bucket = rng.choice(3, size=len(nps_users), p=[0.30, 0.30, 0.40])
    nps_score = np.where(nps_bucket == 0, rng.integers(0, 7, len(nps_users)),
                         np.where(nps_bucket == 1, rng.integers(7, 9, len(nps_users)),
                                  rng.integers(9, 11, len(nps_users))))
    since = now_us - DAYS * 86_400_000_000
    return {
        "order_cancellations": pa.table({
            "order_id": orders.column("order_id").take(cancelled),
            "uid": orders.column("uid").take(cancelled),
            "reason": _pick(rng, CANCEL_REASONS, len(cancelled)),
            "cancelled_at": later(cancelled, 3),
        }),
        "order_ratings": pa.table({
            "order_id": orders.column("order_id").take(rated),
            "uid": orders.column("uid").take(rated),
            "rating": pa.array(rng.choice([1, 2, 3, 4, 5], size=len(rated), p=[0.06, 0.06, 0.13, 0.30, 0.45]), pa.int32()),
            "comment": pa.array([COMMENTS[i] for i in rng.integers(0, len(COMMENTS), len(rated)).tolist()]),
            "rated_at": later(rated, 7),
        }),
        "surveys": pa.concat_tables([
            pa.table({"uid": pa.array(surveyed, pa.int64()), "survey": pa.array(["why_sell"] * len(surveyed)),
                      "question": pa.array(["Why do you want to sell?"] * len(surveyed)),
                      "answer": _pick(rng, (["upgrade", "need_cash", "unused", "other"], [0.4, 0.2, 0.3, 0.1]), len(surveyed)),
                      "answered_at": _times(rng, len(surveyed), since, DAYS)}),
            pa.table({"uid": pa.array(privacy, pa.int64()), "survey": pa.array(["privacy_concern"] * len(privacy)),
                      "question": pa.array(["Are you worried about data left on your device?"] * len(privacy)),
                      "answer": _pick(rng, (["yes", "no"], [0.35, 0.65]), len(privacy)),
                      "answered_at": _times(rng, len(privacy), since, DAYS)}),
        ]),
        "cs_feedback": pa.table({
            "uid": pa.array(cs, pa.int64()),
            "source": _pick(rng, (["chat", "phone", "im"], [0.5, 0.2, 0.3]), len(cs)),
            "topic": _pick(rng, CS_TOPICS, len(cs)),
            "sentiment": _pick(rng, SENTIMENTS, len(cs)),
            "created_at": _times(rng, len(cs), since, DAYS),
        }),
        "nps": pa.table({"uid": pa.array(nps_users, pa.int64()), "score": pa.array(nps_score, pa.int32()),
                         "answered_at": _times(rng, len(nps_users), since, DAYS)}),
    }


def build_demo_warehouse(path: str | Path, users: int = 200_000, seed: int = 42,
                         as_of: date | None = None) -> dict[str, int]:
    """Write the demo warehouse to ``path`` (atomically replacing it); return rows per table."""
    import duckdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    as_of = as_of or datetime.now(timezone.utc).date()
    now_us = int(datetime.combine(as_of, datetime.max.time().replace(microsecond=0), tzinfo=timezone.utc).timestamp() * 1e6)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)
    # Distinct, spaced, non-sequential 10-digit uids.
    all_uids = FIRST_UID + rng.permutation(users * 3)[:users].astype(np.int64) * 7
    con = duckdb.connect(str(tmp))
    next_order = 5_000_000_000
    try:
        for start in range(0, users, CHUNK_USERS):
            uids = all_uids[start:start + CHUNK_USERS]
            tables = {"users": _users(rng, uids, now_us)}
            tables["orders"] = _orders(rng, uids, next_order, now_us)
            next_order += tables["orders"].num_rows
            tables.update(_follow_ups(rng, tables["orders"], uids, now_us))
            for name, table in tables.items():
                con.register("chunk", table)
                if start == 0:
                    con.execute(f"CREATE TABLE {name} AS SELECT * FROM chunk")
                else:
                    con.execute(f"INSERT INTO {name} SELECT * FROM chunk")
                con.unregister("chunk")
        con.execute("CREATE TABLE warehouse_info(key VARCHAR, value VARCHAR)")
        con.executemany("INSERT INTO warehouse_info VALUES (?, ?)",
                        [("seed", str(seed)), ("users", str(users)), ("as_of", as_of.isoformat())])
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                  for t in ("users", "orders", "order_cancellations", "order_ratings", "surveys",
                            "cs_feedback", "nps")}
    finally:
        con.close()
    tmp.replace(path)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="data/warehouse.duckdb")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--as-of", type=date.fromisoformat, default=None)
    args = parser.parse_args(argv)
    started = time.monotonic()
    counts = build_demo_warehouse(args.path, args.users, args.seed, args.as_of)
    print(f"built {args.path} in {time.monotonic() - started:.1f}s: "
          + ", ".join(f"{t} {n:,}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
