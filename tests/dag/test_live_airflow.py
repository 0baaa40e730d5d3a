"""Under a real Airflow (api-server, scheduler, dag-processor, LocalExecutor).

- The plans are one parse unit (the index ``plans.yaml``), yet a broken plan and an alias-bomb plan
  each show as their own import error in the REST API, named by their file, while every good plan
  loads; the errors stay through bundle refreshes; fixing a plan clears its error at the next parse;
  the fixed plan then runs on a worker, which re-parses the index and builds only that plan.
- Quiet hours: a shard whose users are all outside their send hours is ``up_for_reschedule``,
  sends nothing, and sends exactly the users whose hours opened when the scheduler runs it again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from c2b.airflow.dag_factory import plan_files

from devtools.airflow_stack import FAST_PARSING, LOCAL, AirflowStack, base_env, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = plan_files(ROOT / "dags" / "plans")
BROKEN = """\
id: broken_plan
description: A plan with a typo in a channel.
schedule: null
audience:
  segment: cancelled_for_reason.sql
  params: {reason: price_too_low, days: 30}
touches:
  - name: nudge
    channel: emial
    template: "Hi {{ nickname }}"
delivery:
  shards: 4
  retry_delay_seconds: 1
"""
# ~600 bytes that expand to 9**9 strings (issue #11 defect 5).
ALIAS_BOMB = "\n".join([
    "id: bomb", "audience:", "  segment: survey_answers.sql", "  params:", "    survey: why_sell", "    days: 30",
    '    a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *(f"    a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)), "    answer: *a8",
    "touches:", "  - {name: t, channel: outbox, template: hi}", ""])


class LiveAirflow:
    """The LocalExecutor stack (devtools/airflow_stack.py) with this test's DAG and data folders."""

    def __init__(self, stack: AirflowStack, dags: Path, data: Path) -> None:
        self.stack, self.url, self.dags, self.data = stack, stack.url, dags, data
        self.get, self.trigger = stack.get, stack.trigger

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 180) -> Any:
        return wait_for(what, check, timeout)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, redis_server, demo_warehouse: Path) -> Iterator[LiveAirflow]:
    base = tmp_path_factory.mktemp("live")
    home, dags, data = base / "home", base / "dags", base / "c2b"
    dags.mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", dags)
    shutil.copy(ROOT / "dags" / "plans.yaml", dags)
    shutil.copytree(ROOT / "dags" / "plans", dags / "plans")  # the example plans in their business-line folders
    (dags / "plans" / "broken_plan.yaml").write_text(BROKEN)
    (dags / "plans" / "bomb.yaml").write_text(ALIAS_BOMB)
    env = {**base_env(home=home, dags=dags, port=free_port(), executor=LOCAL), **FAST_PARSING,
           "AIRFLOW_CONN_C2B_REDIS": f"{redis_server.url}/?db=0",
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(demo_warehouse)}),
           "C2B_DATA_DIR": str(data)}
    # Not waiting for health: the first test waits for what it needs (the import error).
    stack = AirflowStack(home, env, LOCAL).start(wait=False)
    try:
        yield LiveAirflow(stack, dags, data)
    finally:
        stack.stop()


def test_broken_plan_under_a_real_scheduler(live: LiveAirflow) -> None:
    good = {p.stem for p in EXAMPLES}

    def loaded() -> dict[str, str]:
        dags = {d["dag_id"]: d["relative_fileloc"] for d in live.get("dags?limit=100")["dags"]}
        return dags if good <= set(dags) else {}

    def errors() -> list[dict]:
        return live.get("importErrors")["import_errors"]

    # Each bad plan is one import error, keyed by its YAML file; every good plan loads, from the index.
    found = live.wait("the bad plans' import errors", lambda: len(errors()) == 2 and errors())
    by_file = {e["filename"]: e["stack_trace"] for e in found}
    assert set(by_file) == {"plans/broken_plan.yaml", "plans/bomb.yaml"}
    assert by_file["plans/broken_plan.yaml"].startswith(
        "plans/broken_plan.yaml: touches[0].channel: 'emial' is not allowed; use one of: push, sms")
    assert by_file["plans/broken_plan.yaml"].endswith("(line 9)")
    assert "anchors and aliases (&name / *name) are not allowed" in by_file["plans/bomb.yaml"]
    dags = live.wait("the good plans", loaded)
    assert {d: f for d, f in dags.items() if d in good} == dict.fromkeys(good, "plans.yaml")
    assert "broken_plan" not in dags and "bomb" not in dags

    # The errors stay through bundle refreshes (every 2 s here), though only the index is listed.
    for _ in range(8):
        time.sleep(1)
        assert {e["filename"] for e in errors()} == set(by_file)

    # Fixing the file clears the error and brings its DAG.
    (live.dags / "plans" / "broken_plan.yaml").write_text(BROKEN.replace("channel: emial", "channel: outbox"))
    live.wait("the error to clear", lambda: [e["filename"] for e in errors()] == ["plans/bomb.yaml"]
              and "broken_plan" in loaded())

    # The fixed plan runs end to end on a LocalExecutor worker (which parses plans.yaml for it).
    run_id = live.trigger("broken_plan")
    state = live.wait("the run to finish", lambda: live.get(f"dags/broken_plan/dagRuns/{run_id}")["state"]
                      in ("success", "failed") and live.get(f"dags/broken_plan/dagRuns/{run_id}")["state"])
    tis = live.get(f"dags/broken_plan/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    assert {t["task_id"] for t in tis} == {"extract_audience", "load_shards", "deliver", "report", "cleanup"}
    shards = sorted(t["rendered_map_index"] for t in tis if t["task_id"] == "deliver")
    assert shards and all(s.startswith("shard ") for s in shards), shards
    reports = list((live.data / "reports" / "broken_plan").glob("*.json"))
    summary = json.loads(reports[0].read_text())
    assert summary["status"] == "complete" and summary["outcomes"]["all|nudge|sent"] == summary["audience"]["kept"] > 0


QUIET = """\
id: quiet_hours_live
description: Sends only inside each user's own send hours.
schedule: null
window:
  send_hours: "{opens}-{closes}"
  timezone: Asia/Shanghai
audience:
  segment: cancelled_for_reason.sql
  params: {{reason: price_too_low, days: 30}}
touches:
  - name: nudge
    channel: outbox
    template: "Hi {{{{ nickname }}}}"
delivery:
  shards: 4
"""
UTC_PLUS_8 = {"Asia/Shanghai", "Asia/Hong_Kong"}


def test_quiet_hours_park_the_shards_until_the_users_morning_under_a_real_scheduler(live: LiveAirflow) -> None:
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    import pyarrow.parquet as pq

    # The window opens at a minute boundary 90-150 s from now in UTC+8 and lasts an hour: nobody is
    # inside it at first (UTC+6 users open 2 h later, users abroad even later).
    now = datetime.now(UTC)
    opens = (now + timedelta(seconds=150)).replace(second=0, microsecond=0)
    local = opens.astimezone(ZoneInfo("Asia/Shanghai"))
    plan = QUIET.format(opens=f"{local:%H:%M}", closes=f"{local + timedelta(hours=1):%H:%M}")
    (live.dags / "plans" / "quiet_hours_live.yaml").write_text(plan)
    live.wait("the quiet-hours plan to load", lambda: "quiet_hours_live" in
              {d["dag_id"] for d in live.get("dags?limit=100")["dags"]}, timeout=60)
    run_id = live.trigger("quiet_hours_live")

    def deliver_states() -> list[str]:
        tis = live.get(f"dags/quiet_hours_live/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return [t["state"] for t in tis if t["task_id"] == "deliver"]

    def sent_uids() -> list[str]:
        files = (live.data / "outbox" / "quiet_hours_live").rglob("*.jsonl")
        return [json.loads(line)["uid"] for f in files for line in f.read_text().splitlines()]

    def all_parked() -> bool:
        states = deliver_states()
        return bool(states) and all(s == "up_for_reschedule" for s in states)

    live.wait("every shard to be parked", all_parked, timeout=120)
    assert datetime.now(UTC) < opens, "the run reached delivery too late for this test to mean anything"
    assert sent_uids() == []  # nothing was sent at night

    staging = next((live.data / "staging" / "quiet_hours_live").glob("*.parquet"))
    audience = pq.read_table(staging, columns=["uid", "timezone"]).to_pylist()
    morning = {str(u["uid"]) for u in audience if u["timezone"] in UTC_PLUS_8 or not u["timezone"]}  # default tz
    later = {str(u["uid"]) for u in audience} - morning
    assert morning and later  # both kinds of users are in the audience, or the test proves nothing

    # Once the window opens, the scheduler runs the shards again: the UTC+8 users get their message,
    # once each, and the shards park again for the users whose morning comes later.
    live.wait("the UTC+8 users' messages", lambda: len(sent_uids()) >= len(morning), timeout=240)
    live.wait("every shard to be parked again (or done, if it had no later users)",
              lambda: set(deliver_states()) <= {"up_for_reschedule", "success"}, timeout=120)
    sent = sent_uids()
    assert datetime.now(UTC) >= opens
    assert sorted(sent) == sorted(morning)
    requests.patch(f"{live.url}/api/v2/dags/quiet_hours_live/dagRuns/{run_id}", json={"state": "failed"},
                   timeout=10).raise_for_status()  # let it go: the rest of the audience wakes up hours from now
