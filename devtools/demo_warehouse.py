"""Generate the demo warehouse: a DuckDB file with the C2B team's kinds of data, from a fixed seed.

Why it exists: segments, plans and tests need a warehouse shaped like the real one (users tagged by
acquisition channel, orders and why they were cancelled, explicit data such as ratings and surveys,
implicit data such as customer-service contacts and NPS) without any real data. Everything is drawn
from ``numpy.random.default_rng(seed)``, so the same seed and the same ``as_of`` date give the same
table contents, and a test can assert exact facts about them.

Timestamps are naive UTC. Events fall in the 180 days before ``as_of`` (midnight UTC; default
today), so "cancelled in the last 30 days" finds users on the day the file is built. A file built
days ago ages: rebuild it (or pass ``--as-of``) rather than widen the segment.

Columns are built with numpy, handed to DuckDB as Arrow tables and appended one chunk of users at a
time (1M users a chunk), so 10M users build in bounded memory.

``python -m devtools.demo_warehouse --path data/warehouse.duckdb --users 200000 --seed 42 [--as-of D]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CHUNK_USERS = 1_000_000  # ~0.5 GB of numpy/Arrow columns in flight per chunk
DUCKDB_MEMORY = "512MB"  # DuckDB's own buffers; appends spill to the file, so peak RSS stays ~1.5 GB at any size
HISTORY_DAYS = 180  # every event (order, answer, contact) falls in this window before as_of
SIGNUP_DAYS = 720  # accounts may predate the event window, as on a live platform
IN_PROGRESS_DAYS = 14  # an order still in progress was created recently
DAY = 86_400  # seconds
FIRST_UID = 1_000_000_000  # uid = FIRST_UID + a 33-bit permutation of the user index: 10 digits
UID_BITS = 33
FIRST_ORDER_ID = 5_000_000_000
GENERATOR_VERSION = "2"  # bump whenever the same seed starts giving different data

Choices = tuple[Sequence[str], Sequence[float]]  # labels and their (unnormalised) weights

CHANNELS: Choices = (("app_store", "search_ad", "douyin_ad", "wechat_share", "offline_store", "partner_referral"),
                     (0.30, 0.22, 0.20, 0.15, 0.08, 0.05))
# city -> (weight, timezone). Hong Kong and Urumqi keep their own clocks; quiet hours depend on it.
CITIES = {
    "Shanghai": (14, "Asia/Shanghai"), "Beijing": (13, "Asia/Shanghai"), "Shenzhen": (11, "Asia/Shanghai"),
    "Guangzhou": (10, "Asia/Shanghai"), "Hangzhou": (8, "Asia/Shanghai"), "Chengdu": (7, "Asia/Shanghai"),
    "Wuhan": (6, "Asia/Shanghai"), "Nanjing": (6, "Asia/Shanghai"), "Xi'an": (5, "Asia/Shanghai"),
    "Chongqing": (5, "Asia/Shanghai"), "Tianjin": (4, "Asia/Shanghai"), "Suzhou": (4, "Asia/Shanghai"),
    "Changsha": (3, "Asia/Shanghai"), "Hong Kong": (2.5, "Asia/Hong_Kong"), "Urumqi": (1.5, "Asia/Urumqi"),
}
ABROAD = {"America/Los_Angeles": 0.02, "Europe/London": 0.01}  # share of users whose phone is set abroad
OPT_OUT_RATE = 0.03
PHONE_SECOND_DIGIT: Choices = (("3", "5", "7", "8", "9"), (0.30, 0.25, 0.15, 0.25, 0.05))

# item -> (category, typical quote in yuan, weight)
CATALOG = {
    "iPhone 12": ("phone", 1600, 5), "iPhone 13": ("phone", 2300, 6), "iPhone 14 Pro": ("phone", 4600, 5),
    "Huawei Mate 40 Pro": ("phone", 2200, 3), "Huawei P60": ("phone", 3000, 2), "Xiaomi 13": ("phone", 1800, 3),
    "OPPO Find X6": ("phone", 2400, 2), "vivo X90": ("phone", 2300, 2),
    "MacBook Air M2": ("laptop", 5200, 4), "MacBook Pro 14": ("laptop", 8500, 2),
    "ThinkPad X1 Carbon": ("laptop", 3800, 2), "Huawei MateBook 14": ("laptop", 2800, 2),
    "Dell XPS 13": ("laptop", 3200, 1),
    "iPad Air 5": ("tablet", 2600, 4), "iPad Pro 11": ("tablet", 4200, 2), "Xiaomi Pad 6": ("tablet", 1200, 2),
    "Huawei MatePad 11": ("tablet", 1300, 1),
    "Sony A7 III": ("camera", 6500, 2), "Canon EOS R6": ("camera", 8000, 1), "Fujifilm X-T4": ("camera", 6000, 1),
    "DJI Osmo Pocket 3": ("camera", 2200, 1),
    "Apple Watch S8": ("watch", 1300, 3), "Apple Watch Ultra": ("watch", 3500, 1), "Huawei Watch 4": ("watch", 900, 2),
    "Nintendo Switch OLED": ("console", 1300, 3), "PlayStation 5": ("console", 2300, 2),
    "Xbox Series X": ("console", 2000, 1),
    "LV Neverfull MM": ("luxury_bag", 7500, 1), "Gucci GG Marmont": ("luxury_bag", 6000, 1),
    "Chanel Classic Flap": ("luxury_bag", 38000, 0.5), "Hermes Picotin 18": ("luxury_bag", 22000, 0.3),
}
ORDER_STATUS: Choices = (("completed", "cancelled", "in_progress"), (0.65, 0.25, 0.10))
CANCEL_REASONS = ("price_too_low", "data_privacy_worry", "changed_mind", "slow_pickup", "other")
# A quote below the item's typical price (~40% of orders) is what makes sellers cancel for price:
# 55% of those vs 30% of the others, which gives the documented mix 40/15/25/10/10 overall.
CANCEL_WEIGHTS_LOW_QUOTE = (0.55, 0.11, 0.19, 0.075, 0.075)
CANCEL_WEIGHTS_FAIR_QUOTE = (0.30, 0.177, 0.29, 0.1165, 0.1165)
RATED_SHARE = 0.6  # of completed orders
RATING_WEIGHTS = (0.06, 0.05, 0.10, 0.29, 0.50)  # 1..5 stars
COMMENTS = (  # by star rating; about half the ratings come without a comment (NULL)
    ("quote dropped after inspection", "courier never showed up", "payment took a week"),
    ("inspection too strict", "courier was late", "slow payout"),
    ("ok but slow", "price could be better", "average"),
    ("smooth", "fair price", "quick pickup"),
    ("fast and fair", "great service", "paid within the hour"),
)
WHY_SELL: Choices = (("upgrade", "need_cash", "unused", "other"), (0.40, 0.20, 0.30, 0.10))
WHY_SELL_QUESTION = "What is the main reason you want to sell?"
PRIVACY_QUESTION = "Are you worried about personal data left on your device?"
CS_SOURCES: Choices = (("chat", "phone", "im"), (0.50, 0.20, 0.30))
CS_TOPICS: Choices = (("price", "privacy", "logistics", "inspection", "refund", "other"),
                      (0.30, 0.12, 0.20, 0.18, 0.10, 0.10))
SENTIMENTS: Choices = (("negative", "neutral", "positive"), (0.45, 0.35, 0.20))
NPS_BUCKETS = ((0, 7, 0.30), (7, 9, 0.30), (9, 11, 0.40))  # detractors 0-6, passives 7-8, promoters 9-10

# The documented schema: segment SQL is written against exactly these names and types.
SCHEMA = {
    "users": "uid BIGINT, nickname VARCHAR, city VARCHAR, acquisition_channel VARCHAR, timezone VARCHAR, "
             "signup_at TIMESTAMP, last_active_at TIMESTAMP, opted_out BOOLEAN, phone VARCHAR",
    "orders": "order_id BIGINT, uid BIGINT, item VARCHAR, category VARCHAR, quoted_price DECIMAL(10,2), "
              "status VARCHAR, created_at TIMESTAMP",
    "order_cancellations": "order_id BIGINT, uid BIGINT, reason VARCHAR, cancelled_at TIMESTAMP",
    "order_ratings": "order_id BIGINT, uid BIGINT, rating INTEGER, comment VARCHAR, rated_at TIMESTAMP",
    "surveys": "uid BIGINT, survey VARCHAR, question VARCHAR, answer VARCHAR, answered_at TIMESTAMP",
    "cs_feedback": "uid BIGINT, source VARCHAR, topic VARCHAR, sentiment VARCHAR, created_at TIMESTAMP",
    "nps": "uid BIGINT, score INTEGER, answered_at TIMESTAMP",
    "warehouse_info": "key VARCHAR, value VARCHAR",
}


# ---------------------------------------------------------------- column builders


def _draw(rng: np.random.Generator, weights: Sequence[float], n: int) -> np.ndarray:
    """Indexes into a label set, drawn by (unnormalised) weight."""
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _labels(labels: Sequence[str], idx: np.ndarray) -> pa.Array:
    """A plain string column. Not dictionary-encoded: DuckDB would make that an ENUM, not a VARCHAR."""
    return pa.array(labels, pa.string()).take(pa.array(idx))


def _pick(rng: np.random.Generator, choices: Choices, n: int) -> pa.Array:
    labels, weights = choices
    return _labels(labels, _draw(rng, weights, n))


def _constant(value: str, n: int) -> pa.Array:
    return _labels([value], np.zeros(n, dtype=np.int64))


def _timestamps(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, pa.timestamp("us"))


def _between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray | int) -> np.ndarray:
    """Uniform whole seconds in [lo, hi), element-wise."""
    return lo + (rng.random(len(lo)) * (hi - lo)).astype(np.int64)


def _ascii(*parts: np.ndarray | bytes, n: int) -> pa.Array:
    """Fixed-width ASCII strings glued from byte literals and (n, w) uint8 matrices, loop-free."""
    cols = [np.broadcast_to(np.frombuffer(p, np.uint8), (n, len(p))) if isinstance(p, bytes) else p for p in parts]
    data = np.ascontiguousarray(np.hstack(cols), dtype=np.uint8)
    width = data.shape[1]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _digits(values: np.ndarray, width: int, alphabet: bytes = b"0123456789") -> np.ndarray:
    """The last ``width`` digits of ``values`` in base len(alphabet), as an (n, width) uint8 matrix."""
    powers = len(alphabet) ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return np.frombuffer(alphabet, np.uint8)[(values[:, None] // powers) % len(alphabet)]


def _decimal_cents(cents: np.ndarray) -> pa.Array:
    """DECIMAL(10,2) from integer cents, exactly (a float round trip can turn 2299.00 into 2298.99)."""
    words = np.zeros((len(cents), 2), dtype=np.int64)  # 128-bit little-endian; prices are positive
    words[:, 0] = cents
    return pa.Array.from_buffers(pa.decimal128(10, 2), len(cents), [None, pa.py_buffer(words)])


# ---------------------------------------------------------------- uids


def _uid_key(rng: np.random.Generator) -> tuple[int, int, int]:
    k0, k1, k2 = (int(k) | 1 for k in rng.integers(1, 2**UID_BITS, size=3))
    return k0, k1, k2


def _uids(start: int, stop: int, key: tuple[int, int, int]) -> np.ndarray:
    """Distinct, scattered 10-digit uids for user indexes [start, stop).

    A bijection of the 33-bit index space (odd multiply, add, xor-shift, all invertible mod 2**33),
    so uids are unique without a permutation of every user in memory, and they do not look like
    1..N: the shard hash should be exercised on realistic keys.
    """
    mask, (k0, k1, k2) = np.uint64(2**UID_BITS - 1), key
    x = np.arange(start, stop, dtype=np.uint64)
    x = (x * np.uint64(k1) + np.uint64(k0)) & mask  # uint64 products wrap mod 2**64, fine under the mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(k2)) & mask
    x ^= x >> np.uint64(13)
    return x.astype(np.int64) + FIRST_UID


# ---------------------------------------------------------------- one chunk of users


@dataclass(frozen=True)
class Chunk:
    """The users of one chunk, and when each of them can have events."""

    uids: np.ndarray
    signup: np.ndarray  # epoch seconds
    now: int  # as_of midnight UTC, epoch seconds; every event is before it

    @property
    def window_start(self) -> np.ndarray:
        return np.maximum(self.signup, self.now - HISTORY_DAYS * DAY)


@dataclass(frozen=True)
class Orders:
    """What the follow-up tables need to know about the chunk's orders."""

    who: np.ndarray  # index of the seller in the chunk
    order_id: np.ndarray
    created: np.ndarray
    status: np.ndarray  # index into ORDER_STATUS
    low_quote: np.ndarray  # quoted under the item's typical price


Events = tuple[np.ndarray, np.ndarray]  # (user index in the chunk, epoch seconds): feeds last_active_at


def _signups(rng: np.random.Generator, n: int, now: int) -> np.ndarray:
    """Signup times over two years, denser recently (the platform grows)."""
    return now - DAY // 24 - (rng.random(n) ** 1.5 * SIGNUP_DAYS * DAY).astype(np.int64)


def _orders_per_user(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mostly 0-3 orders (half the users never sold), and 1% of frequent sellers up to 300."""
    count = rng.geometric(0.5, n) - 1
    frequent = rng.random(n) < 0.01
    count[frequent] = np.minimum(4 + rng.zipf(1.8, int(frequent.sum())), 300)
    return count


def _quotes(rng: np.random.Generator, typical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quoted prices in whole yuan around the item's typical price, and whether each is a low one."""
    factor = np.clip(rng.lognormal(0.0, 0.2, len(typical)), 0.4, 1.8)
    step = np.where(typical >= 1000, 10, 1)  # dearer items are quoted in round tens
    yuan = np.maximum(step, np.round(typical * factor / step) * step).astype(np.int64)
    return yuan, factor < 0.95


def _orders(rng: np.random.Generator, chunk: Chunk, first_order_id: int) -> tuple[pa.Table, Orders]:
    who = np.repeat(np.arange(len(chunk.uids)), _orders_per_user(rng, len(chunk.uids)))
    n = len(who)
    items = list(CATALOG)
    item_idx = _draw(rng, [CATALOG[i][2] for i in items], n)
    yuan, low_quote = _quotes(rng, np.array([CATALOG[i][1] for i in items], dtype=np.int64)[item_idx])
    status = _draw(rng, ORDER_STATUS[1], n)
    start = chunk.window_start[who]
    recent = status == ORDER_STATUS[0].index("in_progress")
    start[recent] = np.maximum(start[recent], chunk.now - IN_PROGRESS_DAYS * DAY)
    created = _between(rng, start, chunk.now)
    order_id = np.arange(first_order_id, first_order_id + n, dtype=np.int64)
    table = pa.table({
        "order_id": order_id,
        "uid": chunk.uids[who],
        "item": _labels(items, item_idx),
        "category": _labels([CATALOG[i][0] for i in items], item_idx),
        "quoted_price": _decimal_cents(yuan * 100),
        "status": _labels(ORDER_STATUS[0], status),
        "created_at": _timestamps(created),
    })
    return table, Orders(who, order_id, created, status, low_quote)


def _after(rng: np.random.Generator, t: np.ndarray, min_days: float, mean_days: float, now: int) -> np.ndarray:
    """A follow-up some days after ``t`` (exponential delay), never at or after ``now``."""
    delay = (min_days + rng.exponential(mean_days, len(t))) * DAY
    return np.minimum(t + delay.astype(np.int64), now - 1)


def _cancellations(rng: np.random.Generator, chunk: Chunk, o: Orders) -> tuple[pa.Table, Events, np.ndarray]:
    """One row per cancelled order; also returns which users ever cancelled over data privacy."""
    sel = np.flatnonzero(o.status == ORDER_STATUS[0].index("cancelled"))
    low = o.low_quote[sel]
    reason = np.empty(len(sel), dtype=np.int64)
    reason[low] = _draw(rng, CANCEL_WEIGHTS_LOW_QUOTE, int(low.sum()))
    reason[~low] = _draw(rng, CANCEL_WEIGHTS_FAIR_QUOTE, int((~low).sum()))
    at = _after(rng, o.created[sel], 0.0, 1.5, chunk.now)
    privacy_worried = np.zeros(len(chunk.uids), dtype=bool)
    privacy_worried[o.who[sel][reason == CANCEL_REASONS.index("data_privacy_worry")]] = True
    table = pa.table({
        "order_id": o.order_id[sel],
        "uid": chunk.uids[o.who[sel]],
        "reason": _labels(CANCEL_REASONS, reason),
        "cancelled_at": _timestamps(at),
    })
    return table, (o.who[sel], at), privacy_worried


def _ratings(rng: np.random.Generator, chunk: Chunk, o: Orders) -> tuple[pa.Table, Events]:
    completed = np.flatnonzero(o.status == ORDER_STATUS[0].index("completed"))
    sel = completed[rng.random(len(completed)) < RATED_SHARE]
    stars = _draw(rng, RATING_WEIGHTS, len(sel)) + 1
    flat = [c for per_star in COMMENTS for c in per_star]
    comment = (stars - 1) * len(COMMENTS[0]) + rng.integers(0, len(COMMENTS[0]), len(sel))
    silent = rng.random(len(sel)) < 0.5
    at = _after(rng, o.created[sel], 1.0, 2.0, chunk.now)
    table = pa.table({
        "order_id": o.order_id[sel],
        "uid": chunk.uids[o.who[sel]],
        "rating": pa.array(stars, pa.int32()),
        "comment": pa.array(flat, pa.string()).take(pa.array(comment, mask=silent)),
        "rated_at": _timestamps(at),
    })
    return table, (o.who[sel], at)


def _survey(chunk: Chunk, who: np.ndarray, survey: str, question: str, answers: pa.Array,
            at: np.ndarray) -> pa.Table:
    return pa.table({
        "uid": chunk.uids[who],
        "survey": _constant(survey, len(who)),
        "question": _constant(question, len(who)),
        "answer": answers,
        "answered_at": _timestamps(at),
    })


def _surveys(rng: np.random.Generator, chunk: Chunk, privacy_worried: np.ndarray) -> tuple[pa.Table, Events]:
    """'why_sell' for 15% of users; 'privacy_concern' for 10%, and 40% of those who cancelled over
    privacy, who answer 'yes' three times as often: the explicit data agrees with the implicit."""
    n = len(chunk.uids)
    why = np.flatnonzero(rng.random(n) < 0.15)
    why_at = _between(rng, chunk.window_start[why], chunk.now)
    asked = rng.random(n) < np.where(privacy_worried, 0.40, 0.10)
    priv = np.flatnonzero(asked)
    yes = rng.random(len(priv)) < np.where(privacy_worried[priv], 0.75, 0.25)
    priv_at = _between(rng, chunk.window_start[priv], chunk.now)
    table = pa.concat_tables([
        _survey(chunk, why, "why_sell", WHY_SELL_QUESTION, _pick(rng, WHY_SELL, len(why)), why_at),
        _survey(chunk, priv, "privacy_concern", PRIVACY_QUESTION, _labels(("no", "yes"), yes.astype(np.int64)),
                priv_at),
    ])
    return table, (np.concatenate([why, priv]), np.concatenate([why_at, priv_at]))


def _cs_feedback(rng: np.random.Generator, chunk: Chunk, privacy_worried: np.ndarray) -> tuple[pa.Table, Events]:
    """12% of users contacted customer service, some several times; privacy worriers often about privacy."""
    n = len(chunk.uids)
    contacts = np.where(rng.random(n) < 0.12, np.minimum(rng.geometric(0.6, n), 20), 0)
    who = np.repeat(np.arange(n), contacts)
    topic = _draw(rng, CS_TOPICS[1], len(who))
    topic[privacy_worried[who] & (rng.random(len(who)) < 0.5)] = CS_TOPICS[0].index("privacy")
    at = _between(rng, chunk.window_start[who], chunk.now)
    table = pa.table({
        "uid": chunk.uids[who],
        "source": _pick(rng, CS_SOURCES, len(who)),
        "topic": _labels(CS_TOPICS[0], topic),
        "sentiment": _pick(rng, SENTIMENTS, len(who)),
        "created_at": _timestamps(at),
    })
    return table, (who, at)


def _nps(rng: np.random.Generator, chunk: Chunk) -> tuple[pa.Table, Events]:
    who = np.flatnonzero(rng.random(len(chunk.uids)) < 0.20)
    bucket = _draw(rng, [b[2] for b in NPS_BUCKETS], len(who))
    lo, hi = np.array([b[0] for b in NPS_BUCKETS])[bucket], np.array([b[1] for b in NPS_BUCKETS])[bucket]
    score = lo + (rng.random(len(who)) * (hi - lo)).astype(np.int64)
    at = _between(rng, chunk.window_start[who], chunk.now)
    table = pa.table({"uid": chunk.uids[who], "score": pa.array(score, pa.int32()), "answered_at": _timestamps(at)})
    return table, (who, at)


def _timezones(rng: np.random.Generator, city: np.ndarray) -> np.ndarray:
    """The city's zone, except for the few users whose phone is set abroad; indexes into _zone_labels()."""
    zones = _zone_labels()
    tz = np.array([zones.index(CITIES[c][1]) for c in CITIES])[city]
    r = rng.random(len(city))
    edge = 0.0
    for zone, share in ABROAD.items():
        tz[(r >= edge) & (r < edge + share)] = zones.index(zone)
        edge += share
    return tz


def _zone_labels() -> list[str]:
    return sorted({tz for _, tz in CITIES.values()} | set(ABROAD))


def _users(rng: np.random.Generator, chunk: Chunk, events: Sequence[Events]) -> pa.Table:
    """The users, last seen at their latest event or a random moment since signup, whichever is later."""
    n = len(chunk.uids)
    city = _draw(rng, [w for w, _ in CITIES.values()], n)
    last_active = _between(rng, chunk.signup, chunk.now)
    for who, at in events:
        np.maximum.at(last_active, who, at)
    nick = _digits(rng.integers(0, 36**6, n), 6, b"0123456789abcdefghijklmnopqrstuvwxyz")
    second = np.frombuffer("".join(PHONE_SECOND_DIGIT[0]).encode(), np.uint8)[_draw(rng, PHONE_SECOND_DIGIT[1], n)]
    return pa.table({
        "uid": chunk.uids,
        "nickname": _ascii(b"user_", nick, n=n),
        "city": _labels(list(CITIES), city),
        "acquisition_channel": _pick(rng, CHANNELS, n),
        "timezone": _labels(_zone_labels(), _timezones(rng, city)),
        "signup_at": _timestamps(chunk.signup),
        "last_active_at": _timestamps(last_active),
        "opted_out": pa.array(rng.random(n) < OPT_OUT_RATE),
        "phone": _ascii(b"1", second[:, None], _digits(rng.integers(0, 10**9, n), 9), n=n),
    })


def _chunk_tables(rng: np.random.Generator, uids: np.ndarray, now: int, first_order_id: int) -> dict[str, pa.Table]:
    """All tables' rows for one chunk of users. The draw order is fixed: it is what the seed means."""
    chunk = Chunk(uids, _signups(rng, len(uids), now), now)
    orders, o = _orders(rng, chunk, first_order_id)
    cancellations, cancel_events, privacy_worried = _cancellations(rng, chunk, o)
    ratings, rating_events = _ratings(rng, chunk, o)
    surveys, survey_events = _surveys(rng, chunk, privacy_worried)
    cs_feedback, cs_events = _cs_feedback(rng, chunk, privacy_worried)
    nps, nps_events = _nps(rng, chunk)
    events = [(o.who, o.created), cancel_events, rating_events, survey_events, cs_events, nps_events]
    return {
        "users": _users(rng, chunk, events),
        "orders": orders,
        "order_cancellations": cancellations,
        "order_ratings": ratings,
        "surveys": surveys,
        "cs_feedback": cs_feedback,
        "nps": nps,
    }


# ---------------------------------------------------------------- the file


def _midnight_utc(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def _append(con: Any, name: str, table: pa.Table) -> None:
    con.register("chunk", table)
    try:
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM chunk")
    finally:
        con.unregister("chunk")


def _write(db: Path, users: int, seed: int, as_of: date, chunk_users: int) -> dict[str, int]:
    import duckdb

    now = _midnight_utc(as_of)
    root = np.random.default_rng(seed)
    key = _uid_key(root)
    starts = range(0, users, chunk_users)
    counts = dict.fromkeys(SCHEMA, 0)
    con = duckdb.connect(str(db), config={"memory_limit": DUCKDB_MEMORY})
    try:
        for name, columns in SCHEMA.items():
            con.execute(f"CREATE TABLE {name} ({columns})")
        next_order = FIRST_ORDER_ID
        # One independent stream per chunk, so a chunk's data does not depend on the others' sizes.
        for start, rng in zip(starts, root.spawn(len(starts)), strict=True):
            tables = _chunk_tables(rng, _uids(start, min(start + chunk_users, users), key), now, next_order)
            next_order += tables["orders"].num_rows
            for name, table in tables.items():
                _append(con, name, table)
                counts[name] += table.num_rows
        info = {"seed": str(seed), "users": str(users), "as_of": as_of.isoformat(),
                "history_days": str(HISTORY_DAYS), "generator_version": GENERATOR_VERSION}
        _append(con, "warehouse_info", pa.table({"key": list(info), "value": list(info.values())}))
        counts["warehouse_info"] = len(info)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return counts


def build_demo_warehouse(path: str | Path, users: int = 200_000, seed: int = 42, as_of: date | None = None,
                         *, chunk_users: int = CHUNK_USERS) -> dict[str, int]:
    """Write the demo warehouse to ``path``, replacing any file there; return the rows per table.

    The file is built under a temporary name next to ``path`` and renamed into place, so a reader
    (a running extract, say) sees the old warehouse or the new one, never half of one.
    """
    if not 1 <= users < 2**UID_BITS:
        raise ValueError(f"users must be between 1 and {2**UID_BITS - 1}, not {users}")
    if chunk_users < 1:
        raise ValueError("chunk_users must be positive")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    as_of = as_of or datetime.now(UTC).date()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _remove_db(tmp)
    try:
        counts = _write(tmp, users, seed, as_of, chunk_users)
        path.with_name(path.name + ".wal").unlink(missing_ok=True)  # a stale WAL must not replay into the new file
        os.replace(tmp, path)
    except BaseException:
        _remove_db(tmp)
        raise
    return counts


# ---------------------------------------------------------------- after a send: the demo clock

# What a touch's offer does to the chance that a user sells (orders) within POST_TOUCH_DAYS after
# it: the planted effects the results must find. Users not reached by an offer (control, failed
# sends, other offers) sell at POST_TOUCH_BASE_RATE.
POST_TOUCH_DAYS = 7
POST_TOUCH_BASE_RATE = 0.12
POST_TOUCH_UPLIFT = {"price_up_coupon": 0.08, "red_packet": 0.05}
FIRST_POST_TOUCH_ORDER_ID = 9_000_000_000


def _unit(seed: int, salt: str, keys: Sequence[str]) -> np.ndarray:
    """A uniform [0, 1) number per key, fixed by (seed, salt, key): the same user draws the same."""
    import mmh3

    return np.array([mmh3.hash(f"{seed}:{salt}:{k}".encode("utf-8", "replace"), signed=False) for k in keys],
                    dtype=np.float64) / 2**32


def post_touch_orders(users: Sequence[tuple[str, str | None, datetime]], plan_id: str, seed: int = 42,
                      base_rate: float = POST_TOUCH_BASE_RATE, uplift: dict[str, float] | None = None,
                      days: int = POST_TOUCH_DAYS) -> pa.Table:
    """Return the orders the users of one run place in the ``days`` after their touch.

    ``users``: ``(uid, offer type that reached them or None, touched_at)``. A user sells with
    probability ``base_rate`` plus the offer's planted ``uplift``, at a uniform moment of the window;
    every draw is a hash of (seed, plan, uid), so the same users give the same orders.
    """
    uplift = POST_TOUCH_UPLIFT if uplift is None else uplift
    uids = [u for u, _, _ in users]
    p = np.array([base_rate + uplift.get(offer or "", 0.0) for _, offer, _ in users])
    sells = _unit(seed, f"{plan_id}:sells", uids) < p
    delay = _unit(seed, f"{plan_id}:when", uids) * (days * DAY - 120) + 60  # inside the window, not on its edges
    which = (_unit(seed, f"{plan_id}:item", uids) * len(CATALOG)).astype(np.int64)
    items = list(CATALOG)
    chosen = np.flatnonzero(sells)
    touched = np.array([int(t.replace(tzinfo=UTC).timestamp() if t.tzinfo is None else t.timestamp())
                        for _, _, t in users], dtype=np.int64)
    created = touched[chosen] + delay[chosen].astype(np.int64)
    typical = np.array([CATALOG[items[i]][1] for i in which[chosen]], dtype=np.int64)
    return pa.table({
        "uid": pa.array([int(uids[i]) for i in chosen], pa.int64()),  # the demo's uids are BIGINTs
        "item": _labels(items, which[chosen]),
        "category": _labels([CATALOG[i][0] for i in items], which[chosen]),
        "quoted_price": _decimal_cents(typical * 100),
        "status": _constant("completed", len(chosen)),
        "created_at": _timestamps(created),
    })


def add_post_touch_orders(path: str | Path, plan_id: str, run_id: str,
                          users: Sequence[tuple[str, str | None, datetime]], seed: int = 42, **kwargs: Any) -> int:
    """Advance the demo clock for one run: add the orders its users place after their touch.

    Writes them to the warehouse's ``orders`` (status completed, dated after ``as_of``: the future
    of the day the warehouse was built). They replace the simulated orders of any earlier run
    (listed in ``demo_post_touch_orders``): the demo plans target the same users, and orders
    planted for one run would count in another's window. Returns the number of orders.
    """
    import duckdb

    orders = post_touch_orders(users, plan_id, seed, **kwargs)
    con = duckdb.connect(str(path))
    try:
        con.execute("CREATE TABLE IF NOT EXISTS demo_post_touch_orders (plan_id VARCHAR, run_id VARCHAR, "
                    "order_id BIGINT)")
        con.begin()
        con.execute("DELETE FROM orders WHERE order_id IN (SELECT order_id FROM demo_post_touch_orders)")
        con.execute("DELETE FROM demo_post_touch_orders")
        first = con.execute("SELECT COALESCE(MAX(order_id) + 1, $1) FROM orders WHERE order_id >= $1",
                            [FIRST_POST_TOUCH_ORDER_ID]).fetchall()[0][0]
        ids = np.arange(first, first + orders.num_rows, dtype=np.int64)
        con.register("new_orders", orders.append_column("order_id", pa.array(ids)))
        con.execute("INSERT INTO orders BY NAME SELECT * FROM new_orders")
        con.execute("INSERT INTO demo_post_touch_orders SELECT $1, $2, order_id FROM new_orders", [plan_id, run_id])
        con.unregister("new_orders")
        con.commit()
    finally:
        con.close()
    return orders.num_rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo_warehouse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="data/warehouse.duckdb", help="DuckDB file to (re)create")
    parser.add_argument("--users", type=int, default=200_000, help="number of users (default 200000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--as-of", type=date.fromisoformat, default=None,
                        help="YYYY-MM-DD; events fall in the 180 days before it (default today, UTC)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    counts = build_demo_warehouse(args.path, args.users, args.seed, args.as_of)
    print(f"built {args.path} in {time.monotonic() - started:.1f}s: "
          + ", ".join(f"{t} {n:,}" for t, n in counts.items()))


if __name__ == "__main__":
    main()
