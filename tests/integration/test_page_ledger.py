"""The main pass's ledger by page (issue #13 item 5): one record string per page of the load.

On a real redis-server: what a page's decisions and outcomes leave (records read back by position,
by uid and in bulk), a retry after a crash mid-page (only what is not final is sent again, with its
key), a cleared run re-run on a new load (nothing sent twice, even what the crash left pending), and
two attempts racing on one page (each message counted once).
"""

from __future__ import annotations

import time
from pathlib import Path

from devtools.deliverkit import expected_keys, ledger_entries, load_audience, make_plan, plan_dict
from devtools.gateway import Gateway


def _setup(redis_client, tmp_path: Path, plan_id: str, users: list[str], touches: int = 1, page_size: int = 50):
    from c2b.delivery.ledger import ShardLedger
    from c2b.store.shards import ShardKeys

    data = plan_dict(plan_id, touches=touches, page_size=page_size, concurrency=8)
    plan = make_plan(data)
    load_audience(redis_client, plan, "r1", users, tmp_path / "staging")
    keys = ShardKeys(plan.id, "r1", 1)
    return plan, keys, ShardLedger(redis_client, keys, touches=[t.name for t in plan.touches])


def _page(redis_client, keys, start: int, size: int) -> list[str]:
    from c2b.store.shards import read_page

    return read_page(redis_client, keys, start, size)


def _deliver(redis_client, plan, gw: Gateway) -> dict:
    from c2b.channels import ChannelConfig, make_channel
    from c2b.delivery.shard import ShardDelivery

    channels = {t.name: make_channel(t.channel, ChannelConfig(url=gw.url, conn_id="c_push", redis=redis_client))
                for t in plan.touches}
    return ShardDelivery(redis_client, plan, "r1", 1, channels, lambda: False).run(50, 8).to_xcom()


def test_page_records_read_back_by_position_by_uid_and_in_bulk(redis_client, tmp_path: Path) -> None:
    from c2b.delivery.ledger import Change

    users = [f"{100 + i}" for i in range(40)] + [f"name-{i}" for i in range(10)]  # int64 and hashed uid keys
    plan, keys, ledger = _setup(redis_client, tmp_path, "p_pages", users, touches=2)
    page = _page(redis_client, keys, 0, 50)
    fields = [f"t{j}|{u}" for u in page for j in range(2)]
    # The page's decisions: most pending, a few capped, failed (template) or deferred.
    decided = {f: "p" for f in fields}
    decided.update({fields[0]: "c:per_day", fields[3]: "f:template: no nickname", fields[5]: "d"})
    changes = [Change(f, st, "all|" + f.split("|")[0], {"p": "pending", "d": "deferred"}.get(st[0], "held"),
                      due=2e9 if st == "d" else 0.0) for f, st in decided.items()]
    assert ledger.prepare(changes, page=0) == [True] * len(changes)
    # One request's outcomes, then another's (each a page-path call).
    sent = [f for f, st in decided.items() if st == "p"]
    pipe = redis_client.pipeline(transaction=False)
    ledger.finalize(pipe, [Change(f, "s", "all|" + f.split("|")[0], "sent", page=0) for f in sent[:60]])
    ledger.finalize(pipe, [Change(f, "f:http 400", "all|" + f.split("|")[0], "failed", page=0) for f in sent[60:62]])
    pipe.execute()
    want = {f: ("s" if f in sent[:60] else "f:http 400" if f in sent[60:62] else st) for f, st in decided.items()}

    # The records: one per uid (8-byte key + a code per touch) in the page's string; the hash holds
    # only the deferred entry.
    page_key = ledger.page_key(0)
    assert page_key.startswith(f"c2b:{keys.tag}:pg:") and redis_client.strlen(page_key) == 50 * (8 + 2)
    assert redis_client.hgetall(keys.ledger) == {fields[5].encode(): b"d"}
    assert redis_client.ttl(page_key) > 0
    assert ledger.page_states(0, fields) == [want[f] for f in fields]  # by position
    assert ledger.states(fields) == [want[f] for f in fields]  # by uid (every page of every load)
    assert ledger.bulk_states(fields) == [want[f] for f in fields]
    assert ledger_entries(redis_client, plan, "r1", users) == want
    # The stats: still pending what has no outcome yet, each outcome counted once; a replay of a
    # recorded outcome counts nothing.
    assert ledger.pending_count() == len(sent) - 62
    pipe = redis_client.pipeline(transaction=False)
    ledger.finalize(pipe, [Change(f, "s", "all|" + f.split("|")[0], "sent", page=0) for f in sent[:60]])
    pipe.execute()
    counts, failures, _ = ledger.totals()
    assert sum(n for k, n in counts.items() if k.endswith("|sent")) == 60
    assert failures == {"http 400": 2, "template: no nickname": 1}
    assert ledger.pending_count() == len(sent) - 62


def test_retry_after_a_crash_mid_page_sends_only_what_is_not_final_with_the_same_keys(
        redis_client, tmp_path: Path) -> None:
    from c2b.delivery.ledger import Change

    users = [f"k{i:04d}" for i in range(120)]
    plan, keys, ledger = _setup(redis_client, tmp_path, "p_midpage", users)
    page0 = _page(redis_client, keys, 0, 50)
    # The crashed attempt: page 0 decided (all pending), 35 outcomes recorded, no checkpoint move.
    assert ledger.prepare([Change(f"t0|{u}", "p", "all|t0", "pending") for u in page0], page=0) == [True] * 50
    pipe = redis_client.pipeline(transaction=False)
    ledger.finalize(pipe, [Change(f"t0|{u}", "s", "all|t0", "sent", page=0) for u in page0[:35]])
    pipe.execute()
    assert ledger.pending_count() == 15 and ledger.checkpoint() == 0

    with Gateway() as gw:
        stats = _deliver(redis_client, plan, gw)
        rec = gw.record
    again = expected_keys(plan, "r1", page0[35:])
    rest = expected_keys(plan, "r1", [u for u in users if u not in page0])
    assert set(rec.accepted) == again | rest and rec.duplicates == 0
    assert stats["attempt"]["resent"] == 15 and not stats["attempt"].get("orphans")
    assert stats["counts"] == {"all|t0|sent": 120} and ledger.pending_count() == 0
    assert set(ledger_entries(redis_client, plan, "r1", users).values()) == {"s"}


def test_a_cleared_rerun_on_a_new_load_sends_nothing_twice_and_finishes_what_was_pending(
        redis_client, tmp_path: Path) -> None:
    from c2b.delivery.ledger import Change, ShardLedger
    from c2b.store.shards import drop_run

    users = [f"{5_000_000 + 3 * i}" for i in range(150)]
    plan, keys, ledger = _setup(redis_client, tmp_path, "p_rerun", users)
    first_gen = ledger.gen()
    page0 = _page(redis_client, keys, 0, 50)
    # The first load's attempt crashed on page 0: 20 outcomes recorded, 30 pending; then cleanup.
    assert ledger.prepare([Change(f"t0|{u}", "p", "all|t0", "pending") for u in page0], page=0) == [True] * 50
    pipe = redis_client.pipeline(transaction=False)
    ledger.finalize(pipe, [Change(f"t0|{u}", "s", "all|t0", "sent", page=0) for u in page0[:20]])
    pipe.execute()
    drop_run(redis_client, plan.id, "r1")
    time.sleep(0.01)  # another loaded_at: another generation
    # The cleared run loads again, users in another order (other positions), and delivers.
    load_audience(redis_client, plan, "r1", list(reversed(users)), tmp_path / "staging2")
    rerun = ShardLedger(redis_client, keys)
    assert rerun.gen() != first_gen
    with Gateway() as gw:
        stats = _deliver(redis_client, plan, gw)
        rec = gw.record
    assert set(rec.accepted) == expected_keys(plan, "r1", page0[20:] + [u for u in users if u not in page0])
    assert rec.duplicates == 0
    assert stats["counts"] == {"all|t0|sent": 150} and stats["attempt"]["resent"] == 30
    assert rerun.pending_count() == 0 and not stats["attempt"].get("orphans")
    assert set(ledger_entries(redis_client, plan, "r1", users).values()) == {"s"}
    # And once more: everything is final, by uid across both loads' pages.
    drop_run(redis_client, plan.id, "r1")
    time.sleep(0.01)
    load_audience(redis_client, plan, "r1", users[::2] + users[1::2], tmp_path / "staging3")
    with Gateway() as gw:
        stats = _deliver(redis_client, plan, gw)
        assert not gw.record.accepted and not gw.record.replays
    assert stats["counts"] == {"all|t0|sent": 150}


def test_two_attempts_racing_on_one_page_count_each_message_once(redis_client, tmp_path: Path) -> None:
    from c2b.delivery.ledger import Change, ShardLedger

    users = [f"{900 + i}" for i in range(50)]
    plan, keys, first = _setup(redis_client, tmp_path, "p_race", users)
    second = ShardLedger(redis_client, keys, touches=["t0"])
    page0 = _page(redis_client, keys, 0, 50)
    fields = [f"t0|{u}" for u in page0]
    # Both read the page before either decided: both see every entry new.
    assert first.page_states(0, fields) == [None] * 50 and second.page_states(0, fields) == [None] * 50
    assert first.prepare([Change(f, "p", "all|t0", "pending") for f in fields], page=0) == [True] * 50
    # The second's "pending" applies too: a re-send with the same key (nothing is final yet), and
    # its holds of what the first made pending do not apply (pending -> capped is not a transition).
    held = [Change(f, "c:per_day", "all|t0", "capped") for f in fields[:5]]
    assert second.prepare(held + [Change(f, "p", "all|t0", "pending") for f in fields[5:]], page=0) == \
        [False] * 5 + [True] * 45
    assert first.pending_count() == 50
    # Both send and record every message, interleaved: each outcome counts once.
    for ledger, part in ((first, fields[:30]), (second, fields), (first, fields[30:])):
        pipe = redis_client.pipeline(transaction=False)
        ledger.finalize(pipe, [Change(f, "s", "all|t0", "sent", page=0) for f in part])
        pipe.execute()
    counts, _, extra = first.totals()
    assert counts == {"all|t0|sent": 50} and extra["pending"] == 0
    assert set(ledger_entries(redis_client, plan, "r1", users).values()) == {"s"}


def test_failure_reasons_past_the_shards_limit_are_kept_as_other_reasons(redis_client, tmp_path: Path) -> None:
    """A gateway whose errors name the user gives each failed message its own reason. The ledger
    keeps the shard's first reasons apart and records the later new ones as OTHER_REASON, on the
    page path and the field path alike: the stats and the ledger hash do not grow per message."""
    from c2b.delivery.ledger import OTHER_REASON, REASON_CODES, Change

    users = [str(1000 + i) for i in range(400)]
    plan, keys, ledger = _setup(redis_client, tmp_path, "p_reasons", users, page_size=100)
    every: list[str] = []
    for start in (0, 100, 200):  # the main pass: page path
        fields = [f"t0|{u}" for u in _page(redis_client, keys, start, 100)]
        assert ledger.prepare([Change(f, "p", "all|t0", "pending") for f in fields], page=start) == [True] * 100
        pipe = redis_client.pipeline(transaction=False)
        ledger.finalize(pipe, [Change(f, f"f:http 400: invalid number for {f}", "all|t0", "failed", page=start)
                               for f in fields])
        pipe.execute()
        every += fields
    fields = [f"t0|{u}" for u in _page(redis_client, keys, 300, 100)]  # by field (as the deferred pass)
    assert ledger.prepare([Change(f, "p", "all|t0", "pending") for f in fields]) == [True] * 100
    pipe = redis_client.pipeline(transaction=False)
    ledger.finalize(pipe, [Change(f, f"f:http 400: invalid number for {f}", "all|t0", "failed") for f in fields])
    pipe.execute()
    every += fields

    kept = REASON_CODES - 2  # the codes of pending and deferred come first
    counts, failures, _ = ledger.totals()
    assert sum(n for k, n in counts.items() if k.endswith("|failed")) == 400
    assert sum(failures.values()) == 400 and len(failures) == kept + 1
    assert failures[OTHER_REASON] == 400 - kept
    states = ledger.states(every)
    assert sum(st == f"f:http 400: invalid number for {f}" for f, st in zip(every, states, strict=True)) == kept
    assert states.count(f"f:{OTHER_REASON}") == 400 - kept
    assert redis_client.hlen(keys.ledger) == 0  # every outcome in a record, none left in the hash
    assert ledger.pending_count() == 0


def test_a_new_pages_pending_records_are_the_same_from_the_fast_path_and_the_general_one(
        redis_client, tmp_path: Path) -> None:
    """The page script's fast path (a page not written yet, one touch, every message pending, the
    uid keys distinct) writes the records and answers the offsets the general path does; a call it
    does not fit (the page written, or a uid twice) takes the general path."""
    from c2b.delivery.ledger import Change
    from c2b.delivery.records import uid_key

    users = [str(5000 + i) for i in range(60)] + [f"name-{i}" for i in range(20)]
    plan, keys, ledger = _setup(redis_client, tmp_path, "p_fast", users, page_size=40)
    pages = {start: [f"t0|{u}" for u in _page(redis_client, keys, start, 40)] for start in (0, 40)}

    def records(fields: list[str]) -> bytes:
        return b"".join(uid_key(f.partition("|")[2]) + b"\x01" for f in fields)  # "p" has code 1

    def pending(fields: list[str], start: int) -> list[bool]:
        return ledger.prepare([Change(f, "p", "all|t0", "pending") for f in fields], page=start)

    first = pages[0]
    assert pending(first[:25], 0) == [True] * 25  # fast
    assert redis_client.get(ledger.page_key(0)) == records(first[:25])
    # Where each record is, kept for the outcome's call (a wrong place costs a search of the page).
    assert [ledger._at[f][0] for f in first[:25]] == [9 * i for i in range(25)]
    # The page exists: the general path (the first uid again is a re-send of a pending entry).
    assert pending(first[25:] + first[:1], 0) == [True] * 16
    assert redis_client.get(ledger.page_key(0)) == records(first)
    second = pages[40]
    assert pending(second + second[-1:], 40) == [True] * 40 + [False]  # a uid twice: general
    assert redis_client.get(ledger.page_key(40)) == records(second)
    assert ledger.pending_count() == 80
    # The outcomes (the finalize script's fast path too: one touch, a state with its code, the
    # layout read by page_states as the triage does) find the records where the calls said they
    # are; a record whose place is unknown or stale is looked up; a replayed outcome counts nothing.
    ledger.finalize(redis_client, [Change(first[0], "s", "all|t0", "sent", page=0)])  # "s" gets its code
    assert ledger.page_states(0, first) == ["s"] + ["p"] * 39
    ledger._at[first[1]] = (9 * 7, ledger._at[first[1]][1])  # a stale place: another record's
    del ledger._at[first[2]]
    pipe = redis_client.pipeline(transaction=False)
    for start, fields in pages.items():
        ledger.finalize(pipe, [Change(f, "s", "all|t0", "sent", page=start) for f in fields])
    pipe.execute()
    assert ledger.page_states(0, first) == ["s"] * 40 and ledger.page_states(40, second) == ["s"] * 40
    assert ledger.pending_count() == 0
    assert ledger.totals()[0]["all|t0|sent"] == 80
