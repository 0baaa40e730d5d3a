"""Run many one-key scripts in as few round trips as the deployment allows.

A plain Redis takes them all in one pipeline. Redis Cluster is the catch: redis-py's cluster
pipeline refuses scripts (``ClusterPipeline.eval()`` takes no arguments in redis-py 8), so there
each script goes on a plain pipeline to the node that holds its key's slot: one round trip per
node instead of one per script.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Queue = Callable[[Any], None]  # puts one script call on the pipeline it is given


def run_scripts(redis: Any, calls: Sequence[tuple[str, Queue]]) -> list[Any]:
    """Queue every ``(key, queue)`` on a pipeline that can run a script on ``key``; return the
    scripts' results in the order of ``calls``."""
    pipes: dict[str, Any] = {}
    where: list[tuple[str, int]] = []
    for key, queue in calls:
        if hasattr(redis, "get_node_from_key"):
            node = redis.get_node_from_key(key)
            name, client = node.name, redis.get_redis_connection(node)
        else:
            name, client = "", redis
        if name not in pipes:
            pipes[name] = client.pipeline(transaction=False)
        where.append((name, len(pipes[name])))
        queue(pipes[name])
    results = {name: pipe.execute() for name, pipe in pipes.items()}
    return [results[name][i] for name, i in where]
