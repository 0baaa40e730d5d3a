"""Business-line frequency caps: per local day and ISO week, in total and per channel, counted
across the plans of one line only, exact under parallel takers, replay-safe (real Redis, real HTTP).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from c2b.channels import ChannelConfig, make_channel
from c2b.delivery.controls.frequency_cap import (
    BUCKETS,
    LEVEL0_FIELDS,
    LEVEL2_FIELDS,
    NO_LINE,
    QUARTERS,
    SUBKEYS,
    CapRules,
    ChannelCap,
    FrequencyCap,
    fcap_path,
    fcap_place,
    fcap_receipts,
    forget_counts,
    partner_fcap_keys,
    rules_of,
    week_of,
)
from c2b.delivery.ledger import ShardLedger
from c2b.delivery.shard import ShardDelivery
from c2b.hashing import murmur3_32, uid_bytes
from c2b.plan.lines import with_line
from c2b.plan.load import load_plan
from c2b.results.delivery_log import outcome_of
from c2b.store.shards import ShardKeys
from redis.crc import key_slot

from devtools.deliverkit import load_audience, plan_dict, spec, start_shard
from devtools.gateway import Faults, Gateway

# Wednesday 2026-11-25 12:00 Shanghai: the plans' default timezone.
WED = datetime(2026, 11, 25, 4, 0, tzinfo=UTC).timestamp()
MON, THU = WED - 2 * 86400, WED + 86400


def _line(root: Path, name: str, caps: dict[str, Any] | None, plans: list[dict[str, Any]]) -> list[Any]:
    """Write ``plans/<name>/line.yaml`` and the plan files; return the plans as the factory sees them."""
    folder = root / "plans" / name
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {"owners": ["ops"]}
    if caps is not None:
        settings["frequency_cap"] = caps
    (folder / "line.yaml").write_text(yaml.safe_dump(settings))
    out = []
    for data in plans:
        path = folder / f"{data['id']}.yaml"
        path.write_text(yaml.safe_dump(data))
        out.append(with_line(load_plan(path, check_files=False), path))
    return out


def _channels(plan, url: str) -> dict:
    return {t.name: make_channel(t.channel, ChannelConfig(url=url, conn_id=f"c_{t.channel}")) for t in plan.touches}


def _deliver(redis, plan, run_id: str, users: list[str], folder: Path, url: str, at: float) -> Counter:
    """Load and deliver one shard of ``plan`` with the clock at ``at``; return its outcome counts."""
    load_audience(redis, plan, run_id, users, folder)
    delivery = ShardDelivery(redis, plan, run_id, 1, _channels(plan, url), lambda: False, clock=lambda: at)
    return Counter(delivery.run(plan.delivery.page_size, plan.delivery.concurrency).counts)


def _touches(plan_id: str, *channels: str) -> dict[str, Any]:
    data = plan_dict(plan_id)
    data["touches"] = [{"name": f"t{i}", "channel": ch, "template": "Hi {{ uid }}"}
                       for i, ch in enumerate(channels)]
    return data



def _ledger_state(redis: Any, plan_id: str, run_id: str, field: str, shard: int = 1) -> str | None:
    """Return one ledger entry's state (a final one lives in the shard's outcome records, not the hash)."""
    return ShardLedger(redis, ShardKeys(plan_id, run_id, shard)).states([field])[0]

def test_week_cap_counts_every_plan_of_the_line_across_days(redis_client, tmp_path: Path) -> None:
    """growth: 2/day, 3/week. Plan A sends 2 touches on Monday; plan B's 2 touches on Wednesday get
    one slot (the week's third), the other is capped by per_week; Thursday nothing is left."""
    a, b, c = _line(tmp_path, "growth", {"per_day": 2, "per_week": 3},
                    [_touches("plan_a", "push", "push"), _touches("plan_b", "push", "sms"), _touches("plan_c", "push")])
    assert rules_of(b) == CapRules("growth", 2, 3)
    users = [f"w{i}" for i in range(40)]
    with Gateway() as gw:
        assert _deliver(redis_client, a, "r1", users, tmp_path, gw.url, MON) == {"all|t0|sent": 40, "all|t1|sent": 40}
        assert _deliver(redis_client, b, "r1", users, tmp_path, gw.url, WED) == {"all|t0|sent": 40, "all|t1|capped": 40}
        assert _deliver(redis_client, c, "r1", users, tmp_path, gw.url, THU) == {"all|t0|capped": 40}
        assert gw.record.messages == 120
    fcap = FrequencyCap(redis_client, rules_of(b))
    assert (fcap.count("20261123", "w7"), fcap.count("20261125", "w7"), fcap.count("20261125", "w7", week=True)) \
        == (2, 1, 3)
    # The ledger says which cap refused the touch; the delivery log reports it as the reason.
    state = _ledger_state(redis_client, "plan_b", "r1", "t1|w7")
    assert state == "c:per_week" and outcome_of(state) == ("capped", "per_week")
    # Keys: 40 users over 2,048 buckets: one day key and one week key per bucket (level 0),
    # expiring just past their window.
    day_key, week_key = fcap_path("growth", "20261125", "w7")[0], fcap_path("growth", "2026W48", "w7")[0]
    assert redis_client.hexists(day_key, "w7") and redis_client.hexists(week_key, "w7")
    assert week_key.endswith(":2026W48") and week_of("20261129") == "2026W48" \
        and week_of("20261130") == "2026W49"
    assert 0 < redis_client.ttl(week_key) <= 8 * 86400 and 0 < redis_client.ttl(day_key) <= 2 * 86400
    # A call's keys share one hash tag: one Redis Cluster slot, one atomic script.
    keys = [*fcap_path("growth", "20261125", "w7"), *fcap_path("growth", "2026W48", "w7"),
            fcap_receipts("growth", "20261125", "w7")]
    assert len({key_slot(k.encode()) for k in keys}) == 1


def test_per_channel_caps_apply_per_channel_by_day_and_week(redis_client, tmp_path: Path) -> None:
    """care: 5/day in total, sms 1/day and 2/week, push only under the total."""
    (plan,) = _line(tmp_path, "care", {"per_day": 5, "per_channel": {"sms": {"per_day": 1, "per_week": 2}}},
                    [_touches("calls", "sms", "sms", "push", "push")])
    users = [f"c{i}" for i in range(30)]
    with Gateway() as gw:
        counts = _deliver(redis_client, plan, "mon", users, tmp_path, gw.url, MON)
        assert counts == {"all|t0|sent": 30, "all|t1|capped": 30, "all|t2|sent": 30, "all|t3|sent": 30}
        assert _ledger_state(redis_client, "calls", "mon", "t1|c3") == "c:sms.per_day"
        assert _deliver(redis_client, plan, "wed", users, tmp_path, gw.url, WED) == counts
        # Thursday: the week's two SMS are spent; push still goes.
        counts = _deliver(redis_client, plan, "thu", users, tmp_path, gw.url, THU)
        assert counts == {"all|t0|capped": 30, "all|t1|capped": 30, "all|t2|sent": 30, "all|t3|sent": 30}
        assert _ledger_state(redis_client, "calls", "thu", "t0|c3") == "c:sms.per_week"
    fcap = FrequencyCap(redis_client, rules_of(plan))
    assert fcap.count("20261126", "c3") == 2 and fcap.count("20261126", "c3", "push") == 0  # push is not counted apart
    assert fcap.count("20261126", "c3", "sms", week=True) == 2
    assert fcap.count("20261126", "c3", week=True) == 0  # no week cap in total: no week total kept


def test_another_lines_plans_do_not_count_against_this_line(redis_client, tmp_path: Path) -> None:
    (grow,) = _line(tmp_path, "growth", {"per_day": 1}, [_touches("grow_plan", "push")])
    (care,) = _line(tmp_path, "care", {"per_day": 1}, [_touches("care_plan", "push")])
    outside = load_plan_outside(tmp_path, _touches("loose_plan", "push"), frequency_cap=1)
    users = [f"o{i}" for i in range(25)]
    with Gateway() as gw:
        for plan in (grow, care, outside):
            assert _deliver(redis_client, plan, "r1", users, tmp_path, gw.url, WED) == {"all|t0|sent": 25}
        # The line's own second plan is capped: its first touch took the day's slot.
        (grow2,) = _line(tmp_path, "growth", {"per_day": 1}, [_touches("grow_plan2", "push")])
        assert _deliver(redis_client, grow2, "r1", users, tmp_path, gw.url, WED) == {"all|t0|capped": 25}
    for scope in ("growth", "care", NO_LINE):
        assert FrequencyCap(redis_client, CapRules(scope)).count("20261125", "o1") == 1


def load_plan_outside(root: Path, data: dict[str, Any], **delivery: Any):
    """A plan directly in plans/ (no line): its cap counts in the scope of plans outside any line."""
    data = {**data, "delivery": {**data["delivery"], **delivery}}
    path = root / "plans" / f"{data['id']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    plan = with_line(load_plan(path, check_files=False), path)
    assert rules_of(plan) == CapRules(NO_LINE, delivery.get("frequency_cap"))
    return plan


def test_a_plan_may_be_stricter_than_its_line(redis_client, tmp_path: Path) -> None:
    strict = _touches("strict_plan", "push", "push", "push")
    strict["delivery"]["frequency_cap"] = 1
    plain, tight = _line(tmp_path, "growth", {"per_day": 3}, [_touches("plain_plan", "push"), strict])
    assert (plain.delivery.frequency_cap, tight.delivery.frequency_cap) == (3, 1)
    users = [f"s{i}" for i in range(20)]
    with Gateway() as gw:
        assert _deliver(redis_client, plain, "r1", users, tmp_path, gw.url, WED) == {"all|t0|sent": 20}
        # One touch already today: the plan's own cap of 1 leaves nothing, the line's 3 would have left 2.
        assert _deliver(redis_client, tight, "r1", users, tmp_path, gw.url, WED) == \
            {"all|t0|capped": 20, "all|t1|capped": 20, "all|t2|capped": 20}


def test_a_failed_send_gives_its_slot_back(redis_client, tmp_path: Path) -> None:
    """Every send fails for good (HTTP 400): the slots it took are returned, day, week and channel."""
    (plan,) = _line(tmp_path, "growth", {"per_day": 1, "per_week": 1, "per_channel": {"push": {"per_day": 1}}},
                    [_touches("failing", "push")])
    with Gateway(Faults(reject_rate=1.0)) as gw:
        counts = _deliver(redis_client, plan, "r1", ["f1", "f2"], tmp_path, gw.url, WED)
    assert counts == {"all|t0|failed": 2}
    fcap = FrequencyCap(redis_client, rules_of(plan))
    assert [fcap.count("20261125", "f1"), fcap.count("20261125", "f1", week=True),
            fcap.count("20261125", "f1", "push")] == [0, 0, 0]
    assert not any(redis_client.hlen(k) for k in fcap_path("growth", "20261125", "f1"))  # no zero fields left


def test_a_replayed_call_gets_its_first_answer_and_counts_once(redis_client) -> None:
    rules = CapRules("growth", per_day=2, per_week=3, per_channel=(("sms", ChannelCap(1, None)),))
    fcap = FrequencyCap(redis_client, rules)
    touches = [("20261125", "r1", "sms"), ("20261125", "r1", "sms"), ("20261125", "r1", "push"),
               ("20261125", "r1", "push"), ("20261125", "r2", "push")]
    receipt = fcap.new_receipt()
    first = fcap.take_each(touches, receipt)
    assert first == [None, "sms.per_day", None, "per_day", None]
    # The same call again (its reply was lost): the same answer, nothing counted twice.
    assert FrequencyCap(redis_client, rules).take_each(touches, receipt) == first
    day, sms, week = (fcap.count("20261125", "r1"), fcap.count("20261125", "r1", "sms"),
                      fcap.count("20261125", "r1", week=True))
    assert (day, sms, week) == (2, 1, 2)
    give = fcap.new_receipt()
    fcap.give_back([("20261125", "r1", "sms")], give)
    fcap.give_back([("20261125", "r1", "sms")], give)  # replayed: given back once
    assert (fcap.count("20261125", "r1"), fcap.count("20261125", "r1", "sms")) == (1, 0)
    # A new call is a new receipt: it counts.
    assert fcap.take_each([("20261125", "r1", "sms")]) == [None]
    # Thursday: the week's third touch, then none.
    assert fcap.take_each([("20261126", "r1", "push")] * 2) == [None, "per_week"]


def _race(url: str, rules: CapRules, touches: list[tuple[str, str, str]], start: Any, out: Any) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    fcap = FrequencyCap(client, rules)
    start.wait(timeout=30)  # every process connected: go at once
    got: list[str] = []
    for i in range(0, len(touches), 50):  # pages of 50, like a shard's
        batch = touches[i:i + 50]
        got += [uid for (_, uid, _), why in zip(batch, fcap.take_each(batch), strict=True) if why is None]
    out.put(got)


@pytest.mark.parametrize("what", ["total", "channel", "week"])
def test_parallel_processes_racing_for_the_last_slot_exactly_one_gets_it(redis_server, redis_client, what) -> None:
    """8 processes ask for every user's last slot at once (the total's, a channel's, or the week's):
    each user's slot goes to exactly one of them."""
    rules, earlier, counted = {
        "total": (CapRules("growth", per_day=3), [("20261125", "push")] * 2, {}),
        "channel": (CapRules("growth", per_day=9, per_channel=(("sms", ChannelCap(2, 5)),)),
                    [("20261125", "sms"), *[("20261125", "push")] * 3], {"channel": "sms"}),
        "week": (CapRules("growth", per_week=4), [("20261124", "push")] * 3, {"week": True}),  # Tuesday's
    }[what]
    users = [f"u{i}" for i in range(600)]
    fcap = FrequencyCap(redis_client, rules)
    before = [(day, u, ch) for u in users for day, ch in earlier]
    assert fcap.take_each(before) == [None] * len(before)  # every user is one touch short of the cap
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = ctx.Barrier(8)
    # Each process starts at its own eighth of the users and goes round (all ask for every user): a
    # process that starts a little late still meets the others, so "really raced" fails only when
    # the processes did not overlap at all; in one shared order, the first one away could take
    # every slot before the others' first call (seen once in CI).
    procs = [ctx.Process(target=_race, args=(redis_server.url, rules,
                                              [("20261125", u, "sms") for u in users[k * 75:] + users[:k * 75]],
                                              start, out)) for k in range(8)]
    for p in procs:
        p.start()
    per_process = [out.get(timeout=60) for _ in procs]
    winners = Counter(uid for got in per_process for uid in got)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert winners == Counter({u: 1 for u in users})
    assert sum(1 for got in per_process if got) >= 2, "the processes really raced"
    full = {"total": 3, "channel": 2, "week": 4}[what]
    assert {fcap.count("20261125", u, **counted) for u in users} == {full}


def test_two_plans_of_a_line_running_at_once_send_each_user_once(redis_server, redis_client, tmp_path: Path) -> None:
    """care: 1/day. Two plans' shards run in their own processes over the same users at the same
    time: every user gets exactly one message from the two."""
    plans = _line(tmp_path, "care", {"per_day": 1}, [_touches("race_a", "push"), _touches("race_b", "push")])
    users = [f"p{i:04d}" for i in range(1500)]
    for plan in plans:
        load_audience(redis_client, plan, "r1", users, tmp_path)
    with Gateway(Faults(median_latency_s=0.002)) as gw:
        procs = [start_shard({**spec(redis_server.url, _touches(p.id, "push"), "r1", 1, gw.url), "gate": "test:go",
                              "plan_file": str(tmp_path / "plans" / "care" / f"{p.id}.yaml")}, tmp_path, p.id)
                 for p in plans]
        deadline = time.monotonic() + 120
        while int(redis_client.get("test:go:ready") or 0) < len(procs) and time.monotonic() < deadline:
            time.sleep(0.01)
        redis_client.set("test:go", 1)  # both processes are ready: they start at once
        stats = []
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, (tmp_path / "race_a.log").read_text()[-2000:]
            stats.append(json.loads(out.strip().splitlines()[-1])["counts"])
        got = Counter(m["uid"] for m in gw.record.accepted.values())
    assert got == Counter({u: 1 for u in users}), f"{sum(got.values())} messages for {len(users)} users"
    assert sum(s.get("all|t0|sent", 0) for s in stats) == len(users)
    assert sum(s.get("all|t0|capped", 0) for s in stats) == len(users)
    assert all(s.get("all|t0|sent", 0) > 0 for s in stats), "both plans sent some: they really raced"


def _users_of_one_bucket(n: int) -> list[str]:
    users = []
    for i in range(10_000_000):
        if murmur3_32(f"k{i}".encode()) & (BUCKETS - 1) == 0:  # bucket 1
            users.append(f"k{i}")
            if len(users) == n:
                return users
    raise AssertionError("not enough users")


def test_no_key_grows_past_its_bound(redis_client) -> None:
    """20,000 users spread over 2,048 buckets: each bucket-day is one key (level 0) of ~10 fields."""
    fcap = FrequencyCap(redis_client, CapRules("growth", 3, 5, (("sms", ChannelCap(1, 2)),)))
    users = [f"b{i}" for i in range(20_000)]
    fcap.take_each([("20261125", u, ch) for u in users for ch in ("sms", "push")])
    keys = [k for k in redis_client.scan_iter("c2b:fcap:*", count=1000) if not k.endswith(b":rcpt")]
    assert len(keys) == 2 * BUCKETS  # a day key and a week key per bucket
    assert max(redis_client.hlen(k) for k in keys) < 30
    assert {redis_client.object("encoding", k) for k in keys} == {b"listpack"}
    assert {fcap_place(u)[0] for u in users} == set(range(1, BUCKETS + 1))
    assert len({fcap_place(u)[1] for u in users}) == SUBKEYS


@pytest.mark.parametrize("capped", [False, True])
def test_a_bucket_day_fills_level_0_then_its_quarters_then_its_sub_keys(redis_client, capped) -> None:
    """1,600 users of one bucket in a day (~3.3M users of a line): the first LEVEL0_FIELDS (448) go
    into the bucket's key, the next into its 4 quarters (LEVEL2_FIELDS, 256, each), the rest into
    the 32 sub-keys; no key passes its bound, each stays a listpack, every user's count is right. Counted again,
    a user keeps its count, whichever level holds it."""
    users = _users_of_one_bucket(1600)
    rules = CapRules("growth", per_day=3) if capped else CapRules("growth")
    fcap = FrequencyCap(redis_client, rules)
    for i in range(0, len(users), 100):  # a flush of 100 at a time, as the recorder's
        fcap.count_sends([("20261125", u, "push") for u in users[i:i + 100]])
    level0, quarters, subs = (f"c2b:fcap:{{growth:1}}:20261125{s}" for s in ("", ":q", ":"))
    assert redis_client.hlen(level0) == LEVEL0_FIELDS
    assert [redis_client.hlen(f"{quarters}{q}") for q in range(QUARTERS)] == [LEVEL2_FIELDS] * QUARTERS
    in_subs = [redis_client.hlen(f"{subs}{j}") for j in range(SUBKEYS)]
    assert sum(in_subs) == len(users) - LEVEL0_FIELDS - QUARTERS * LEVEL2_FIELDS and max(in_subs) < 60
    keys = [k for k in redis_client.scan_iter("c2b:fcap:{growth:1}:20261125*") if not k.endswith(b":rcpt")]
    assert len(keys) == 1 + QUARTERS + sum(1 for n in in_subs if n)
    assert {redis_client.object("encoding", k) for k in keys} == {b"listpack"}
    assert all(0 < redis_client.ttl(k) for k in keys)
    assert [fcap.count("20261125", u) for u in users] == [1] * len(users)
    # A second touch of the first 300 users: each still has 2 (level 0 was full for the counting
    # path, which then adds a field lower down; a capped write adds to the user's own field).
    fcap.count_sends([("20261125", u, "push") for u in users[:300]])
    assert [fcap.count("20261125", u) for u in users] == [2] * 300 + [1] * 1300
    assert redis_client.hlen(level0) == LEVEL0_FIELDS
    assert max(redis_client.hlen(k) for k in keys if k != level0.encode()) <= LEVEL2_FIELDS
    if capped:
        assert fcap.take_each([("20261125", u, "push") for u in users[:300]] * 2) \
            == [None] * 300 + ["per_day"] * 300
        assert [fcap.count("20261125", u) for u in users[:300]] == [3] * 300


def test_fields_on_two_levels_add_up_and_a_capped_write_merges_them(redis_client) -> None:
    """A user counted at level 0 before it filled and at a sub-key after (the counting path does
    not look up), or in the one-hash-per-bucket layout (which is level 0), counts the sum; the next
    capped write keeps one field, the first on its path."""
    rules = CapRules("growth", per_day=4, per_week=5, per_channel=(("sms", ChannelCap(1, None)),))
    level0, _, sub = fcap_path("growth", "20261125", "v1")
    week0, _, week_sub = fcap_path("growth", "2026W48", "v1")
    redis_client.hset(level0, "v1", "2;sms=1")
    redis_client.hset(sub, "v1", "1")
    redis_client.hset(week_sub, "v1", "3")
    fcap = FrequencyCap(redis_client, rules)
    assert (fcap.count("20261125", "v1"), fcap.count("20261125", "v1", "sms"),
            fcap.count("20261125", "v1", week=True)) == (3, 1, 3)
    assert fcap.take_each([("20261125", "v1", "sms"), ("20261125", "v1", "push"), ("20261125", "v1", "push")]) \
        == ["sms.per_day", None, "per_day"]
    assert (fcap.count("20261125", "v1"), fcap.count("20261125", "v1", "sms"),
            fcap.count("20261125", "v1", week=True)) == (4, 1, 4)
    assert redis_client.hget(level0, "v1") == b"4;sms=1" and not redis_client.exists(sub)  # merged into level 0
    assert redis_client.hget(week_sub, "v1") == b"4" and not redis_client.exists(week0)  # the first holding it
    # A give-back takes from the merged field; a plan without caps adds where it counts.
    fcap.give_back([("20261125", "v1", "push")])
    assert (fcap.count("20261125", "v1"), fcap.count("20261125", "v1", week=True)) == (3, 3)
    FrequencyCap(redis_client, CapRules("growth")).take([("20261125", "v1", "push", 1)])
    assert fcap.take([("20261125", "v1", 5)]) == {("20261125", "v1"): 0}


def test_a_plan_without_caps_counts_its_sends_for_the_capped_plans_of_its_scope(redis_client) -> None:
    from store_cases import assert_counting_without_caps

    assert_counting_without_caps(redis_client)


def test_counts_of_the_layout_with_64_sub_keys_still_count(redis_client) -> None:
    """A bucket-day had 64 sub-keys before it had 32: the users of sub-key ``j`` then are in ``j``
    still, those of ``j + 32`` (its partner) now count in ``j``. On the day of the upgrade a count in
    the partner counts against the caps, the first capped write moves it, a count of a plan without
    caps adds to it, and a give-back takes from it."""
    def sub64(uid: str) -> int:
        return (abs(murmur3_32(uid_bytes(uid))) >> 11) & 63

    stay = next(u for u in (f"q{i}" for i in range(1000)) if sub64(u) < SUBKEYS)
    before = f"c2b:fcap:{{growth:{fcap_place(stay)[0]}}}:20261125:{sub64(stay)}"  # its key with 64 sub-keys
    assert before == fcap_path("growth", "20261125", stay)[2]
    v1, v2 = [u for u in (f"p{i}" for i in range(1000)) if sub64(u) >= SUBKEYS][:2]
    was_day, was_week = partner_fcap_keys("growth", "20261125", v1)
    was_day2, was_week2 = partner_fcap_keys("growth", "20261125", v2)
    assert was_day.endswith(f":20261125:{sub64(v1)}") and was_week.endswith(f":2026W48:{sub64(v1)}")
    assert was_day not in fcap_path("growth", "20261125", v1)
    redis_client.hset(was_day, v1, "2;sms=1")
    redis_client.hset(was_week, v1, "3")
    redis_client.hset(was_day2, v2, "1")
    redis_client.hset(was_week2, v2, "1")
    rules = CapRules("growth", per_day=3, per_week=4, per_channel=(("sms", ChannelCap(1, None)),))
    fcap = FrequencyCap(redis_client, rules)
    assert (fcap.count("20261125", v1), fcap.count("20261125", v1, "sms"),
            fcap.count("20261125", v1, week=True)) == (2, 1, 3)
    assert fcap.take_each([("20261125", v1, "sms"), ("20261125", v1, "push"), ("20261125", v1, "push")]) \
        == ["sms.per_day", None, "per_day"]
    assert (fcap.count("20261125", v1), fcap.count("20261125", v1, "sms"),
            fcap.count("20261125", v1, week=True)) == (3, 1, 4)
    assert redis_client.hget(fcap_path("growth", "20261125", v1)[0], v1) == b"3;sms=1"  # moved, merged
    assert not redis_client.exists(was_day) and not redis_client.exists(was_week)  # emptied: gone
    FrequencyCap(redis_client, CapRules("growth")).take([("20261125", v2, "push", 1)])
    assert fcap.count("20261125", v2) == 2 and redis_client.hget(was_day2, v2) == b"1"
    fcap.give_back([("20261125", v2, "push")])
    assert (fcap.count("20261125", v2), fcap.count("20261125", v2, week=True)) == (1, 0)
    assert fcap.take([("20261125", v2, 5)]) == {("20261125", v2): 2}
    assert not redis_client.exists(was_day2) and not redis_client.exists(was_week2)


def test_forget_counts_deletes_a_scopes_counts_and_says_how_many_user_days(redis_client) -> None:
    FrequencyCap(redis_client, CapRules("growth", per_day=2, per_week=3)).take_each(
        [("20261125", f"z{i}", "push") for i in range(50)] + [("20261124", "z1", "push")])
    redis_client.hset(fcap_path("growth", "20261125", "y1")[1], "y1", "1")  # a quarter's
    FrequencyCap(redis_client, CapRules("care", per_day=1)).take_each([("20261125", "z1", "push")])
    assert forget_counts(redis_client, "growth") == 52
    assert not list(redis_client.scan_iter("c2b:fcap:{growth:*"))
    assert FrequencyCap(redis_client, CapRules("care")).count("20261125", "z1") == 1
