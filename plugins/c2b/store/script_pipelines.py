"""Run many scripts in as few round trips as the deployment allows.

A plain Redis takes them all in one pipeline. Redis Cluster is the catch: redis-py's cluster
pipeline refuses scripts (``ClusterPipeline.eval()`` takes no arguments in redis-py 8), so there
each script goes on a plain pipeline to the node that holds its key's slot: one round trip per
node instead of one per script.

:func:`run_scripts` queues one-key calls; :func:`run_evalsha` runs one script body by its SHA1
(the body is sent only when a server answers NOSCRIPT, once) over calls of several keys each,
which on a cluster must share one slot (:func:`slot_groups` groups keys so).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
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


def is_cluster(redis: Any) -> bool:
    """Return whether ``redis`` is a Redis Cluster client (a script's keys must share one slot)."""
    return hasattr(redis, "get_node_from_key")


def slot_groups(redis: Any, keys: Iterable[str]) -> list[list[str]]:
    """Split ``keys`` into groups one script call may take: all of them on a plain Redis, one
    group per hash slot on a cluster (in first-seen order)."""
    keys = list(keys)
    if not is_cluster(redis):
        return [keys] if keys else []
    groups: dict[int, list[str]] = defaultdict(list)
    for key in keys:
        groups[redis.keyslot(key)].append(key)
    return list(groups.values())


def script_sha(source: str) -> str:
    """Return the SHA1 Redis knows script ``source`` by."""
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


def run_evalsha(redis: Any, source: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
    """Run ``EVALSHA`` of ``source`` for every ``(keys, args)``; return the results in order.

    One pipeline per node (on a cluster every call's keys must share a slot: the first key picks
    the node). A call a server answers NOSCRIPT did not run: the script is loaded there and those
    calls alone are sent again, so a script need not be idempotent.
    """
    from redis.exceptions import NoScriptError

    sha = script_sha(source)
    nodes: dict[str, tuple[Any, list[int]]] = {}
    for i, (keys, _) in enumerate(calls):
        if is_cluster(redis):
            node = redis.get_node_from_key(keys[0])
            name, client = node.name, redis.get_redis_connection(node)
        else:
            name, client = "", redis
        nodes.setdefault(name, (client, []))[1].append(i)
    out: list[Any] = [None] * len(calls)
    for client, idxs in nodes.values():
        todo = idxs
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    out[i] = result
            if not missing:
                break
            client.script_load(source)
            todo = missing
    return out
