"""The delivery ledger of one shard: what happened to every (touch, uid), kept exactly once.

Keys (all share the shard's hash tag, so every script below touches a single cluster slot)::

    c2b:{<plan>:<run>:<shard>}:ledger    HASH  "<touch>|<uid>" -> state
    c2b:{<plan>:<run>:<shard>}:stats     HASH  "<variant>|<touch>|<outcome>" -> messages, "!<reason>" -> failures
    c2b:{<plan>:<run>:<shard>}:deferred  ZSET  "<touch>|<uid>" parked for quiet hours, score = due (epoch s);
                                               +inf once picked up (pending), removed when final
    c2b:{<plan>:<run>:<shard>}:ckpt      HASH  next (first rank not done), users, pages, "<variant>|-|holdout"

States: ``p`` pending (about to be sent, or in flight), ``s`` sent, ``f:<reason>`` failed for good,
``c`` capped (frequency cap), ``x`` expired (the plan's window closed before the user's hours
opened), ``d`` deferred (quiet hours). Only ``p`` is re-sent by a retry; ``s``, ``f``, ``c``, ``x``
are final. The stats' ``#pending`` counts the ``p`` entries, so a shard can tell in one read whether
anything is still unaccounted for.

Why scripts: a state change and its counter move together in one atomic call, and each call is
conditional on the current state, so replaying it (a flush retried after a Redis blip, two
attempts of one shard racing) never counts a message twice. The stats are therefore the ledger's
own totals, cumulative over every attempt of the shard: what the run report shows.

The ledger and stats outlive the run (TTL, default 7 days): a cleared and re-run DAG run consults
them and sends nothing twice. The checkpoint lives and dies with the loaded audience (its ranks
mean nothing for another load), which is why the per-page counters live there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from c2b.store.shards import ShardKeys

PENDING, SENT, DEFERRED, CAPPED, EXPIRED = "p", "s", "d", "c", "x"
LEDGER_TTL = 7 * 24 * 3600

# KEYS: ledger, stats, deferred, receipts. ARGV: ttl, receipt ttl, receipt, previous receipt, then
# (field, state, "variant|touch", outcome, due) x n. Moves an entry that is new or deferred to
# ``state`` (and a pending one back to deferred, or to failed when its message can no longer be
# rendered). The answer is kept under the call's receipt: a replay of the same call (its reply was
# lost when Redis went down right after running it, and the client sent it again) gets the first
# answer back instead of "not yours" for the entries the first run made pending. The caller's
# previous receipt is dropped: it got that answer, so that call can no longer be replayed.
_PREPARE = """
local done = redis.call('HGET', KEYS[4], ARGV[3])
if done then
  local out = {}
  for i = 1, #done do out[i] = tonumber(string.sub(done, i, i)) end
  return out
end
local out = {}
for i = 5, #ARGV, 5 do
  local f, st, vt, outcome, due = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local cur = redis.call('HGET', KEYS[1], f)
  local ok = 0
  if cur == false or cur == 'd' or (cur == 'p' and (st == 'd' or string.sub(st, 1, 2) == 'f:')) then
    ok = 1
    redis.call('HSET', KEYS[1], f, st)
    if st == 'p' then redis.call('HINCRBY', KEYS[2], '#pending', 1) end
    if cur == 'p' then redis.call('HINCRBY', KEYS[2], '#pending', -1) end
    if cur == 'd' and st ~= 'd' then
      redis.call('HINCRBY', KEYS[2], vt .. '|deferred', -1)
      if st == 'p' then redis.call('ZADD', KEYS[3], '+inf', f) else redis.call('ZREM', KEYS[3], f) end
    end
    if st == 'd' then
      if cur ~= 'd' then
        redis.call('HINCRBY', KEYS[2], vt .. '|deferred', 1)
        redis.call('HINCRBY', KEYS[2], '#deferred_total', 1)
      end
      redis.call('ZADD', KEYS[3], due, f)
    elseif st ~= 'p' then
      redis.call('HINCRBY', KEYS[2], vt .. '|' .. outcome, 1)
      if string.sub(st, 1, 2) == 'f:' then redis.call('HINCRBY', KEYS[2], '!' .. string.sub(st, 3), 1) end
    end
  end
  out[#out + 1] = ok
end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
if ARGV[4] ~= '' then redis.call('HDEL', KEYS[4], ARGV[4]) end
redis.call('HSET', KEYS[4], ARGV[3], table.concat(out))
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[2]))
return out
"""
RECEIPT_TTL = 3600  # longer than any replay: the client's own retries plus C2B_REDIS_PATIENCE_S

# KEYS: ledger, stats, deferred. ARGV: ttl, then (field, state, "variant|touch", outcome) x n.
# Only from pending; a message sent from the deferred queue leaves it here.
_FINALIZE = """
local out = {}
for i = 2, #ARGV, 4 do
  local f, st, vt, outcome = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ok = 0
  if redis.call('HGET', KEYS[1], f) == 'p' then
    ok = 1
    redis.call('HSET', KEYS[1], f, st)
    redis.call('HINCRBY', KEYS[2], '#pending', -1)
    redis.call('HINCRBY', KEYS[2], vt .. '|' .. outcome, 1)
    if string.sub(st, 1, 2) == 'f:' then redis.call('HINCRBY', KEYS[2], '!' .. string.sub(st, 3), 1) end
    redis.call('ZREM', KEYS[3], f)
  end
  out[#out + 1] = ok
end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return out
"""

# KEYS: ckpt. ARGV: expected start, next, users, ttl, then (counter, n) x k. Moves the checkpoint
# over one finished page, once.
_ADVANCE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if cur ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'next', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'users', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 'pages', 1)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], tonumber(ARGV[i + 1])) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


@dataclass(frozen=True)
class Change:
    """A ledger state change of one message, with the counter it moves."""

    field: str
    state: str
    variant_touch: str
    outcome: str
    due: float = 0.0


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


class ShardLedger:
    """The ledger, stats, deferred queue and checkpoint of one shard of one run."""

    def __init__(self, redis: Any, keys: ShardKeys, ttl: int = LEDGER_TTL, ckpt_ttl: int = 48 * 3600) -> None:
        self.redis = redis
        self.keys = keys
        self.ledger = keys.ledger
        self.stats = f"c2b:{keys.tag}:stats"
        self.deferred = f"c2b:{keys.tag}:deferred"
        self.ckpt = keys.checkpoint
        self.ttl = ttl
        self.ckpt_ttl = ckpt_ttl
        # redis-py refuses EVALSHA inside a Redis Cluster pipeline: there, scripts run one by one.
        self.pipelined_scripts = not hasattr(redis, "get_node_from_key")
        self._prepare = redis.register_script(_PREPARE)
        self._finalize = redis.register_script(_FINALIZE)
        self._advance = redis.register_script(_ADVANCE)
        self._answered = ""  # receipt of the last prepare call whose answer arrived

    def states(self, fields: Sequence[str]) -> list[str | None]:
        """Return the current state of each ledger field (``None``: never seen)."""
        if not fields:
            return []
        return [_text(v) for v in self.redis.hmget(self.ledger, list(fields))]

    def prepare(self, changes: Sequence[Change], receipt: str | None = None) -> list[bool]:
        """Apply changes to new/deferred entries (and pending -> deferred); return which applied.

        ``receipt`` names this logical call (:meth:`new_receipt`): pass the same one when retrying
        it, so a call that ran but whose answer was lost gets its own answer back.
        """
        if not changes:
            return []
        receipt = receipt or self.new_receipt()
        args: list[Any] = [self.ttl, RECEIPT_TTL, receipt, self._answered]
        for c in changes:
            args += [c.field, c.state, c.variant_touch, c.outcome, f"{c.due:.0f}"]
        keys = [self.ledger, self.stats, self.deferred, self.keys.receipts]
        applied = [bool(x) for x in self._prepare(keys=keys, args=args)]
        self._answered = receipt
        return applied

    @staticmethod
    def new_receipt() -> str:
        return uuid.uuid4().hex

    def finalize(self, pipe: Any, changes: Sequence[Change]) -> None:
        """Queue on ``pipe`` (or run, on a cluster): pending -> final state (sent or failed)."""
        if not changes:
            return
        args: list[Any] = [self.ttl]
        for c in changes:
            args += [c.field, c.state, c.variant_touch, c.outcome]
        self._finalize(keys=[self.ledger, self.stats, self.deferred], args=args,
                       client=pipe if self.pipelined_scripts else self.redis)

    def advance(self, pipe: Any, start: int, end: int, users: int, counters: dict[str, int]) -> None:
        """Queue on ``pipe`` (or run, on a cluster): move the checkpoint from ``start`` to ``end``."""
        args: list[Any] = [start, end, users, self.ckpt_ttl]
        for k, n in counters.items():
            args += [k, n]
        self._advance(keys=[self.ckpt], args=args, client=pipe if self.pipelined_scripts else self.redis)

    def checkpoint(self) -> int:
        raw = self.redis.hget(self.ckpt, "next")
        return int(raw) if raw else 0

    def due(self, now: float, limit: int) -> list[str]:
        """Return up to ``limit`` deferred fields whose time has come."""
        return [_text(f) or "" for f in self.redis.zrangebyscore(self.deferred, "-inf", now, start=0, num=limit)]

    def picked_up(self) -> list[str]:
        """Return the deferred fields a previous attempt picked up (pending) but did not record.

        All at once: they leave the queue as they are recorded, so paging by offset would skip some.
        """
        return [_text(f) or "" for f in self.redis.zrangebyscore(self.deferred, "+inf", "+inf")]

    def pending_count(self) -> int:
        """Return how many entries are pending (handed to a send whose outcome is not recorded)."""
        return int(self.redis.hget(self.stats, "#pending") or 0)

    def pending_fields(self, count: int = 1000) -> list[str]:
        """Return every pending entry's field (a scan of the ledger: only for the orphan sweep)."""
        return [_text(f) or "" for f, v in self.redis.hscan_iter(self.ledger, count=count) if v == b"p"]

    def forget_deferred(self, fields: Sequence[str]) -> None:
        """Drop queue members whose ledger entry is already final (keeps the queue honest)."""
        if fields:
            self.redis.zrem(self.deferred, *fields)

    def waiting(self) -> tuple[int, float | None]:
        """Return (deferred messages, earliest due time) of the shard."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.deferred, "-inf", "(+inf")
        pipe.zrangebyscore(self.deferred, "-inf", "(+inf", start=0, num=1, withscores=True)
        n, first = pipe.execute()
        return int(n), (float(first[0][1]) if first else None)

    def totals(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """Return (outcome counts, failure reasons, checkpoint counters), cumulative over attempts."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.stats)
        pipe.hgetall(self.ckpt)
        stats, ckpt = pipe.execute()
        counts: dict[str, int] = {}
        failures: dict[str, int] = {}
        extra: dict[str, int] = {}
        for k, v in stats.items():
            key, n = _text(k) or "", int(v)
            if key.startswith("!"):
                failures[key[1:]] = n
            elif key.startswith("#"):
                extra[key[1:]] = n
            elif n:
                counts[key] = n
        for k, v in ckpt.items():
            key = _text(k) or ""
            if "|" in key:
                counts[key] = counts.get(key, 0) + int(v)
            else:
                extra[key] = int(v)
        return counts, failures, extra

