"""What a run expects to find in Redis, and the error when it is not there.

``load_shards`` writes the run's meta key (``c2b:{<plan>:<run>}:meta``) with the shard count and
the members of every shard (``sizes``), and marks it ``complete`` when every shard key holds what
was scanned. A deliver task checks its shard against that record before it starts and again when
it has finished: a Redis that restarted without persistence, was flushed, or let the run's keys
expire reads exactly like an empty shard (no page, nothing to send), and before this check the
task then "succeeded" with most of its audience never sent.

No retry can bring lost keys back, so :class:`RunStateLost` is raised for the Airflow edge to fail
the task without retries (``AirflowFailException``), with what to do instead.
"""

from __future__ import annotations

from typing import Any

from c2b.store import packed
from c2b.store.shards import ShardKeys, read_layout


class RunStateLost(RuntimeError):
    """A run's shard keys are missing or hold other than what was loaded; retrying cannot help."""

    def __init__(self, plan_id: str, run_id: str, shard: int, what: str) -> None:
        self.plan_id, self.run_id, self.shard = plan_id, run_id, shard
        super().__init__(
            f"run state lost for plan {plan_id}, run {run_id}, shard {shard}: {what}. Redis restarted "
            "without persistence, was flushed, or the run's keys expired (delivery.key_ttl_hours). No retry "
            "can fix lost state, so this task is failed without retries. Re-run the plan (trigger a new "
            "run: it extracts and loads the audience again); see docs/safety.md 'Missing run state'. "
            "Run Redis with persistence (appendonly yes, appendfsync everysec) so a restart keeps runs.")


def loaded_size(redis: Any, plan_id: str, run_id: str, shard: int) -> int:
    """Return the members shard ``shard`` was loaded with; raise :class:`RunStateLost` when the run's
    meta or the shard key is missing, not completely loaded, or holds a different number of users."""
    layout = read_layout(redis, plan_id, run_id)
    if layout is None:
        raise RunStateLost(plan_id, run_id, shard, "the run's meta key is missing")
    if layout.get("state") != "complete":
        raise RunStateLost(plan_id, run_id, shard, f"the run's load state is {layout.get('state')!r}, not 'complete'")
    sizes = layout.get("sizes") or []
    if not 1 <= shard <= len(sizes):
        raise RunStateLost(plan_id, run_id, shard, f"the run was loaded into {len(sizes)} shards")
    expected = int(sizes[shard - 1])
    stored = stored_size(redis, ShardKeys(plan_id, run_id, shard), str(layout.get("encoding", "zset")))
    if stored != expected:
        raise RunStateLost(plan_id, run_id, shard, f"the shard holds {stored} users but {expected} were loaded")
    return expected


def stored_size(redis: Any, keys: ShardKeys, encoding: str) -> int:
    """Return how many users the shard's audience key holds now (0 when it is gone)."""
    if encoding == "packed":
        return int(redis.strlen(keys.packed)) // packed.WIDTH
    return int(redis.zcard(keys.audience))
