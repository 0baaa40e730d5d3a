"""Store behaviours shared by the standalone and the cluster test modules (real Redis in both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from c2b.delivery.controls.frequency_cap import NO_LINE, CapRules, ChannelCap, FrequencyCap, fcap_path
from c2b.store.shards import ShardKeys, load_shards, read_page


def staging(path: Path, uids: list[str], **attrs: list[Any]) -> Path:
    """Write a staging Parquet like extract's: uid, variant, then attribute columns."""
    cols: dict[str, Any] = {"uid": pa.array(uids, pa.string()), "variant": pa.array(["a"] * len(uids))}
    cols.update({k: pa.array(v) for k, v in attrs.items()})
    pq.write_table(pa.table(cols), path)
    return path


def page_through(redis: Any, plan: str, run: str, shards: list[int], page_size: int) -> list[str]:
    """Read every shard from position 0 to the end, page by page."""
    out: list[str] = []
    for s in shards:
        cursor = 0
        while page := read_page(redis, ShardKeys(plan, run, s), cursor, page_size):
            out += page
            cursor += len(page)
    return out


def assert_round_trip(redis: Any, tmp_path: Path, uids: list[str], encoding: str, expect: str) -> None:
    path = staging(tmp_path / f"{encoding}.parquet", uids)
    result = load_shards(redis, path, "plan_rt", "run-1", 16, encoding=encoding, batch_rows=3000)
    assert result.encoding == expect
    assert result.members == len(uids)
    got = page_through(redis, "plan_rt", "run-1", result.non_empty, 97)
    assert len(got) == len(uids) and set(got) == set(uids), "every uid read back exactly once"


def assert_resume(redis: Any, tmp_path: Path, uids: list[str], encoding: str) -> None:
    """Stop part-way through a shard; a fresh reader from the saved cursor reads the rest once."""
    path = staging(tmp_path / "resume.parquet", uids)
    result = load_shards(redis, path, "plan_rs", "run-1", 4, encoding=encoding)
    done: list[str] = []
    for s in result.non_empty:
        keys = ShardKeys("plan_rs", "run-1", s)
        cursor, pages = 0, 0
        while pages < 3 and (page := read_page(redis, keys, cursor, 50)):
            done += page
            cursor += len(page)
            pages += 1
        # ... the task dies here; the retry starts from the checkpointed cursor:
        while page := read_page(redis, keys, cursor, 50):
            done += page
            cursor += len(page)
        assert cursor == result.shards[s]
    assert sorted(done) == sorted(uids) and len(done) == len(set(done))


def assert_counting_without_caps(client: Any) -> None:
    """A plan without caps counts its sends (day totals, with the day key's TTL); a capped plan of
    the same scope is then refused by those counts; a field holding per-channel counts (written by
    a line's scripts) is still counted, through the script."""
    uncapped = FrequencyCap(client, CapRules(NO_LINE))
    users = [str(500_000 + i) for i in range(300)] + ["u-x", "é"]
    granted = uncapped.take([("20261125", u, "push", 1) for u in users] + [("20261125", users[0], "sms", 1)])
    assert granted == {("20261125", u): 2 if u == users[0] else 1 for u in users}
    assert [uncapped.count("20261125", u) for u in users[:3]] == [2, 1, 1]
    # What the recorder calls after recording sends: the same counts, no answer; a replay of the
    # same receipt (a reply lost, the call retried) counts nothing twice.
    uncapped.count_sends([("20261125", u, "push") for u in users[2:4]], "r-sends")
    uncapped.count_sends([("20261125", u, "push") for u in users[2:4]], "r-sends")
    assert [uncapped.count("20261125", u) for u in users[:5]] == [2, 1, 2, 2, 1]
    # Asks of two days interleaved in one call (the script answers day by day), and uids the
    # one-string form cannot carry (whitespace; the extract refuses them, a caller may not).
    odd = ["a b", "tab\tuid", ""]
    uncapped.count_sends([("20261126", users[5], "push"), ("20261125", users[5], "push"),
                          ("20261126", users[6], "push"), *(("20261126", u, "push") for u in odd)])
    assert [uncapped.count(d, u) for d, u in [("20261125", users[5]), ("20261126", users[5]),
                                              ("20261126", users[6]), ("20261127", users[6])]] == [2, 1, 1, 0]
    assert [uncapped.count("20261126", u) for u in odd] == [1, 1, 1]
    day_key = fcap_path(NO_LINE, "20261125", users[0])[0]  # 302 users over 2,048 buckets: level 0
    assert 0 < client.ttl(day_key) <= 3600  # a day long past: MIN_TTL
    capped = FrequencyCap(client, CapRules(NO_LINE, per_day=2))
    assert capped.take_each([("20261125", users[0], "push"), ("20261125", users[1], "push")]) == ["per_day", None]
    line = CapRules("growth", per_day=5, per_channel=(("sms", ChannelCap(per_day=3)),))
    FrequencyCap(client, line).take_each([("20261125", "u-x", "sms")])  # the field becomes "1;sms=1"
    FrequencyCap(client, CapRules("growth")).take([("20261125", "u-x", "sms", 2)])  # caps removed: counts go on
    assert FrequencyCap(client, line).count("20261125", "u-x") == 3
    assert FrequencyCap(client, line).count("20261125", "u-x", "sms") == 1  # as the script: channels uncounted
    # The per-channel field again, second in a call whose first day is another: the script answers
    # day by day, and the field it could not count is the one counted again.
    FrequencyCap(client, CapRules("growth")).count_sends([("20261126", "v", "push"), ("20261125", "u-x", "sms"),
                                                          ("20261126", "w", "push")])
    assert [FrequencyCap(client, line).count(d, u) for d, u in [("20261125", "u-x"), ("20261126", "v"),
                                                                ("20261126", "w")]] == [4, 1, 1]

