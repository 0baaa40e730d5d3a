"""The brakes: kill switch, shared rate limit, frequency cap, quiet hours (real Redis, real HTTP).

Shards run in their own processes where the property is about several workers at once (kill
switch, rate limit); single-shard rules run in-process.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from c2b import steps
from c2b.channels import ChannelConfig, make_channel
from c2b.delivery.contacts import contacted_since
from c2b.delivery.controls.frequency_cap import NO_LINE, FrequencyCap, fcap_path
from c2b.delivery.controls.kill_switch import KillSwitch, set_flag
from c2b.delivery.controls.rate_limit import RateLimiter
from c2b.hashing import shard_index

from devtools.deliverkit import expected_keys, load_audience, make_plan, plan_dict, spec, start_shard
from devtools.gateway import Faults, Gateway, GatewayProcess


def _stats(proc) -> dict:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, proc.returncode
    return json.loads(out.strip().splitlines()[-1])


def _channels(plan, url: str, redis=None, **extra):
    return {t.name: make_channel(t.channel, ChannelConfig(url=url, extra=extra, conn_id=f"c_{t.channel}", redis=redis))
            for t in plan.touches}


def test_kill_switch_flipped_mid_run_stops_every_shard_within_one_page_and_resume_sends_nothing_twice(
        redis_server, redis_client, tmp_path: Path) -> None:
    shards, page, conc = 4, 40, 4
    data = plan_dict("p_killsw", shards=shards, page_size=page, concurrency=conc)
    plan = make_plan(data)
    users = [f"k{i:05d}" for i in range(4000)]
    load_audience(redis_client, plan, "r1", users, tmp_path)
    want = expected_keys(plan, "r1", users)
    with Gateway(Faults(median_latency_s=0.01)) as gw:
        procs = [start_shard(spec(redis_server.url, data, "r1", s, gw.url), tmp_path, f"s{s}")
                 for s in range(1, shards + 1)]
        deadline = time.monotonic() + 60
        while gw.record.messages < len(want) // 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        set_flag(redis_client, plan.id, on=True)
        flipped = time.time()
        stats = [_stats(p) for p in procs]
        assert all(s["stopped"] and "c2b:kill:p_killsw" in s["stop_reason"] for s in stats)
        after: dict[int, int] = {s: 0 for s in range(1, shards + 1)}
        for key, t in zip(list(gw.record.accepted), gw.record.accept_times, strict=True):
            if t > flipped:
                after[shard_index(gw.record.accepted[key]["uid"], shards)] += 1
        # Requests dispatched before the flip may still land after it (the window), plus at most
        # the rest of the page being read when the switch was seen.
        assert all(n <= page + conc for n in after.values()), after
        stopped_at = len(gw.record.accepted)
        assert stopped_at < len(want)

        set_flag(redis_client, plan.id, on=False)
        procs = [start_shard(spec(redis_server.url, data, "r1", s, gw.url), tmp_path, f"again{s}")
                 for s in range(1, shards + 1)]
        stats = [_stats(p) for p in procs]
        assert not any(s["stopped"] for s in stats)
        assert set(gw.record.accepted) == want and gw.record.duplicates == 0
        assert sum(s["users"] for s in stats) == len(users)
    print(f"\nkill switch: {stopped_at} of {len(want)} sent before stop; accepted after flip per shard: {after}; "
          f"replays on resume: {sum(gw.record.replays.values())}")


def test_kill_switch_reads_the_variable_at_most_every_interval(redis_client) -> None:
    calls = []
    value = ["[]"]

    def read() -> str:
        calls.append(1)
        return value[0]

    now = [0.0]
    ks = KillSwitch(redis_client, "p1", read, variable_every=2.0, clock=lambda: now[0])
    assert not ks() and len(calls) == 1
    value[0] = '["p0", "p1"]'
    now[0] = 1.0
    assert not ks() and len(calls) == 1  # cached: no API call within 2 s
    now[0] = 2.5
    assert ks() and ks.reason == "Airflow Variable c2b_kill_switch" and len(calls) == 2
    set_flag(redis_client, "all")
    assert ks() and ks.reason == "Redis flag c2b:kill"


def _limited_shard_processes(redis_server, redis_client, tmp_path: Path, plan_id: str, shards: int, users: int,
                             rate: float, meanwhile=None) -> list[float]:
    """Run ``shards`` shard processes sharing one ``rate`` limit (requests of 10 messages); return
    the gateway's acceptance times. ``meanwhile(procs, gateway)`` runs while they send."""
    data = plan_dict(plan_id, shards=shards, page_size=50, concurrency=16)
    plan = make_plan(data)
    uids = [f"{plan_id}-{i:05d}" for i in range(users)]
    load_audience(redis_client, plan, "r1", uids, tmp_path)
    # The gateway runs in its own process: in this (large) pytest process a garbage collection can
    # hold its threads for a good part of a second and release the queued requests as a "burst".
    with GatewayProcess(tmp_path) as gw:
        extra = {"rate_limit": rate, "batch_size": 10}
        gate = f"test:{plan_id}:go"
        procs = [start_shard({**spec(redis_server.url, data, "r1", s, gw.url, extra), "gate": gate}, tmp_path, f"s{s}")
                 for s in range(1, shards + 1)]
        # Every process has imported and connected before any sends: on a loaded 2-core machine
        # their start-ups spread over seconds, and a limit shared by 3 of 8 is not the property.
        deadline = time.monotonic() + 120
        while int(redis_client.get(f"{gate}:ready") or 0) < shards and time.monotonic() < deadline:
            time.sleep(0.01)
        assert int(redis_client.get(f"{gate}:ready") or 0) == shards, "the shard processes did not start"
        redis_client.set(gate, 1)
        if meanwhile:
            meanwhile(procs, gw)
        rebooked = sum(_stats(p)["attempt"].get("rate_slots_rebooked", 0) for p in procs)
        stats, times = gw.stats(), gw.accept_times()
    assert stats["accepted"] == users and stats["duplicates"] == 0
    return sorted(times), rebooked


def _busiest_second(times: list[float]) -> int:
    return max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))


def test_eight_shard_processes_share_one_rate_limit(redis_server, redis_client, tmp_path: Path) -> None:
    """8 shard processes, one 1,000/s channel limit: together they stay within 5% of it.

    While all eight are sending (the middle 90% of messages: processes start and finish at
    different moments) the rate must be within 5% of the limit: the shared limit is obeyed and
    used. No one-second window may see more than the limit + 10% (a send that reaches its slot
    late books a new one rather than bursting, see the stall test below).
    Requests carry 10 messages (an SMS gateway's batch) so that reaching 1,000 msgs/s does not
    depend on spare CPU on a shared 2-core test machine; the limiter counts messages either way
    (single sends against a shared limit: the thread test below and bench/deliver.py).
    """
    shards, rate = 8, 1000.0
    times, rebooked = _limited_shard_processes(redis_server, redis_client, tmp_path, "p_rate", shards, 4800, rate)
    busiest = _busiest_second(times)
    lo, hi = len(times) // 20, len(times) - len(times) // 20
    steady = (hi - lo - 1) / (times[hi - 1] - times[lo])
    took = times[-1] - times[0]
    whole = (len(times) - 1) / took
    print(f"\nrate limit: {shards} processes, limit {rate:.0f}/s: busiest 1 s window {busiest}, "
          f"middle 90% {steady:.1f}/s ({steady / rate:.1%}), whole run {whole:.1f}/s over {took:.2f}s, "
          f"slots reached late and booked again: {rebooked}")
    assert busiest <= 1.10 * rate
    if not rebooked:
        assert abs(steady - rate) <= 0.05 * rate
    else:
        # A process starved of CPU (a loaded CI machine) reaches some slots late and gives them
        # up rather than send late; the limit then hands out its slots at the rate, used or lost.
        assert abs((len(times) - 1 + 10 * rebooked) / took - rate) <= 0.05 * rate


def test_a_stalled_shard_process_does_not_burst_past_the_shared_limit_when_it_resumes(
        redis_server, redis_client, tmp_path: Path) -> None:
    """Four shard processes share 1,000/s; two are frozen (SIGSTOP) for 0.6 s, three times.

    A frozen process holds reservations whose slots pass while it sleeps; the other processes use
    the slots after them. Sending those late would add to the others' sends: the resumed process
    must book new slots instead, so no one-second window sees more than the limit (+10%).
    """
    rate = 1000.0

    def freeze_some(procs, gateway) -> None:
        deadline = time.monotonic() + 60
        while gateway.stats()["accepted"] < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        for round_ in range(3):
            frozen = procs[round_ % 2::2]  # shards 1 and 3, then 2 and 4, then 1 and 3
            for proc in frozen:
                os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(0.6)
            for proc in frozen:
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.5)

    times, rebooked = _limited_shard_processes(redis_server, redis_client, tmp_path, "p_stall", 4, 6000, rate,
                                               freeze_some)
    busiest = _busiest_second(times)
    print(f"\nrate limit with stalls: busiest 1 s window {busiest} (limit {rate:.0f}/s), "
          f"slots reached late and booked again: {rebooked}")
    assert busiest <= 1.10 * rate


def test_rate_limiter_paces_threads_and_respects_the_plan_limit_too(redis_client) -> None:
    lim = RateLimiter(redis_client, "t", 200.0)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            time.sleep(lim.reserve())
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 180 <= rate <= 210, rate


def test_frequency_cap_is_atomic_across_parallel_takers(redis_client) -> None:
    cap = FrequencyCap(redis_client, 3)
    granted: list[int] = []

    def take() -> None:
        for _ in range(10):
            granted.append(cap.take([("20260506", "u1", 1)])[("20260506", "u1")])

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 3 and cap.count("20260506", "u1") == 3
    cap.give_back([("20260506", "u1")])
    assert cap.count("20260506", "u1") == 2
    assert redis_client.ttl(fcap_path(NO_LINE, "20260506", "u1")[0]) > 0  # its bucket-day


def test_frequency_cap_counts_across_plans(redis_client, tmp_path: Path) -> None:
    """Plan A (uncapped) sends 2 touches; plan B (cap 3/day, 2 touches) then gets one more each."""
    users = [f"f{i}" for i in range(60)]
    a = make_plan(plan_dict("p_a", touches=2))
    b = make_plan(plan_dict("p_b", touches=2, frequency_cap=3))
    with Gateway() as gw:
        for plan in (a, b):
            load_audience(redis_client, plan, "r1", users, tmp_path)
            stats = steps.step_deliver(plan, "r1", 1, redis_client, _channels(plan, gw.url), lambda: False)
        assert stats["counts"] == {"all|t0|sent": 60, "all|t1|capped": 60}
    day = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d")
    assert FrequencyCap(redis_client, None).count(day, "f7") == 3
    # Sent users are recorded for cross-plan exclusion ("not contacted in the last N days").
    assert contacted_since(redis_client, ["f7", "never-sent"], datetime.now(UTC)) == [True, False]


def test_quiet_hours_park_users_until_their_local_morning_then_send(redis_client, tmp_path: Path) -> None:
    """At 23:30 Shanghai (15:30 UTC) a Shanghai user waits for 09:00; a London user (15:30) gets it now."""
    data = plan_dict("p_quiet")
    data["window"] = {"send_hours": "09:00-21:00", "timezone": "Asia/Shanghai"}
    plan = make_plan(data)
    users = [f"z{i}" for i in range(40)]
    tzs = ["Europe/London" if i % 2 else "Asia/Shanghai" for i in range(40)]
    tzs[0] = "Not/AZone"  # unknown: the plan's timezone applies
    load_audience(redis_client, plan, "r1", users, tmp_path, {"timezone": tzs})
    night = datetime(2026, 5, 6, 15, 30, tzinfo=UTC).timestamp()
    morning = datetime(2026, 5, 7, 1, 0, 30, tzinfo=UTC).timestamp()  # 09:00:30 in Shanghai
    from c2b.delivery.shard import ShardDelivery

    with Gateway() as gw:
        first = ShardDelivery(redis_client, plan, "r1", 1, _channels(plan, gw.url), lambda: False,
                              clock=lambda: night).run(50, 8).to_xcom()
        assert first["counts"] == {"all|t0|sent": 20, "all|t0|deferred": 20}
        assert first["deferred"] == 20 and first["deferred_total"] == 20
        assert first["next_due"] == "2026-05-07T01:00:00+00:00"
        sent_to = {m["uid"] for m in gw.record.accepted.values()}
        assert sent_to == {u for u, tz in zip(users, tzs, strict=True) if tz == "Europe/London"}

        # An attempt that picked 5 parked users up at 09:00 and was killed before recording them:
        # the next attempt re-sends exactly those (same keys) and then the rest.
        from c2b.delivery.ledger import Change, ShardLedger
        from c2b.store.shards import ShardKeys

        ledger = ShardLedger(redis_client, ShardKeys(plan.id, "r1", 1))
        parked = ledger.due(morning, 5)
        assert ledger.prepare([Change(f, "p", "all|t0", "pending") for f in parked]) == [True] * 5
        assert ledger.picked_up() == sorted(parked) and ledger.waiting()[0] == 15

        second = ShardDelivery(redis_client, plan, "r1", 1, _channels(plan, gw.url), lambda: False,
                               clock=lambda: morning).run(50, 8).to_xcom()
        assert second["counts"] == {"all|t0|sent": 40} and second["attempt"]["resent"] == 5
        assert ledger.picked_up() == [] and ledger.waiting() == (0, None)
        assert second["deferred"] == 0 and second["deferred_total"] == 20 and second["next_due"] is None
        assert len(gw.record.accepted) == 40 and gw.record.duplicates == 0 and not gw.record.replays


def test_window_closed_for_good_marks_messages_expired(redis_client, tmp_path: Path) -> None:
    data = plan_dict("p_expired")
    data["window"] = {"end": "2026-05-06", "send_hours": "09:00-21:00"}
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", ["e1", "e2"], tmp_path)
    from c2b.delivery.shard import ShardDelivery

    late = datetime(2026, 5, 6, 15, 30, tzinfo=UTC).timestamp()  # 23:30 on the last day
    with Gateway() as gw:
        st = ShardDelivery(redis_client, plan, "r1", 1, _channels(plan, gw.url), lambda: False,
                           clock=lambda: late).run(50, 4).to_xcom()
    assert st["counts"] == {"all|t0|expired": 2} and st["deferred"] == 0 and not gw.record.requests


def test_cli_kill_sets_lists_and_releases_the_flags(redis_server, redis_client, monkeypatch, capsys) -> None:
    from c2b.cli import main

    monkeypatch.setenv("C2B_REDIS_URL", redis_server.url)
    assert main(["kill", "p_cli"]) == 0 and redis_client.exists("c2b:kill:p_cli")
    assert main(["kill", "all"]) == 0 and redis_client.exists("c2b:kill")
    assert KillSwitch(redis_client, "other")() and KillSwitch(redis_client, "p_cli").reason == ""
    main(["kill", "--status"])
    assert "c2b:kill, c2b:kill:p_cli" in capsys.readouterr().out
    assert main(["kill", "all", "--off"]) == 0 and main(["kill", "p_cli", "--off"]) == 0
    assert not redis_client.exists("c2b:kill", "c2b:kill:p_cli") and not KillSwitch(redis_client, "p_cli")()
