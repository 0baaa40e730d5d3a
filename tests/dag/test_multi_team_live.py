"""The business lines as Airflow teams (multi-team mode) under a live api-server, dag-processor and
scheduler: each line folder is a team's DAG bundle, its plans run in the team's pool on the team's
executor, the run records the user who triggered it (and the results store its audit), the Code
tab serves the plan's YAML, and a task of one line cannot read a connection of the other line's
team while it reads its own and the platform's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from c2b.plan.lines import multi_team_env
from c2b.plan.load import load_plan

from devtools.airflow_stack import (
    FAST_PARSING,
    LOCAL,
    AirflowStack,
    base_env,
    free_port,
    simple_auth_settings,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
PLAN = "cancelled_price_coupon"  # growth line, outbox channel: needs only c2b_redis and c2b_warehouse
LINES = ("growth", "care")

# A DAG of a line (in the line's bundle, so of its team) whose one task reads a connection of each
# team and a platform one (no team) through the Task SDK, as a plan's tasks do, and returns what it got.
PROBE_DAG = '''\
from datetime import datetime

from airflow.sdk import DAG, BaseHook, task
from airflow.sdk.exceptions import AirflowNotFoundException

with DAG("connection_probe_{line}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def read_connections():
        got = {{}}
        for conn_id in {conn_ids!r}:
            try:
                got[conn_id] = BaseHook.get_connection(conn_id).host
            except AirflowNotFoundException as exc:
                got[conn_id] = "not found: " + str(exc)
        return got

    read_connections()
'''


def team_conn(line: str) -> str:
    return f"c2b_{line}_secret"


@pytest.fixture(scope="module")
def teams(tmp_path_factory: pytest.TempPathFactory, redis_server, demo_warehouse: Path):
    import redis

    # The session's Redis holds earlier tests' re-entry history of the same demo users: start clean.
    redis.Redis.from_url(redis_server.url).flushall()
    base = tmp_path_factory.mktemp("teams")
    home, dags, data = base / "home", base / "dags", base / "c2b"
    shutil.copytree(ROOT / "dags" / "plans", dags / "plans")
    # Manual runs only: unpausing the daily plan would also start a scheduled run, whose sends (and
    # the re-entry rule) would leave the test's own run without an audience.
    plan_file = dags / "plans" / "growth" / f"{PLAN}.yaml"
    plan_file.write_text(plan_file.read_text().replace('schedule: "@daily"', "schedule: null"))
    for line in LINES:
        (dags / "plans" / line / "connection_probe.py").write_text(
            PROBE_DAG.format(line=line, conn_ids=(*(team_conn(n) for n in LINES), "c2b_redis")))
    port = free_port()
    env = {**base_env(home=home, dags=dags, port=port, executor=LOCAL), **FAST_PARSING,
           **multi_team_env(dags / "plans", f"http://127.0.0.1:{port}/execution/"),
           **simple_auth_settings({"alice": ("admin", LINES)}),
           # Platform connections every line shares (no team); a line's own carry its team (below).
           "AIRFLOW_CONN_C2B_REDIS": f"{redis_server.url}/?db=0",
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(demo_warehouse)}),
           "C2B_DATA_DIR": str(data)}
    setup = [cmd for line, pool in (("growth", "c2b_growth"), ("care", "c2b_care"))
             for cmd in (["teams", "create", line], ["pools", "set", pool, "8", f"{line} line", "--team-name", line])]
    stack = AirflowStack(home, env, LOCAL, inherit_airflow_env=False)
    try:
        stack.start(setup=setup, timeout=240)
        stack.login("alice")
        # A connection per team, with a team: the REST API (the CLI's `connections add` has no team option).
        for line in LINES:
            made = stack.post("connections", {"connection_id": team_conn(line), "conn_type": "generic",
                                              "host": f"{line}.secret.example", "password": f"{line}-password",
                                              "team_name": line})
            assert made["team_name"] == line
        yield stack, dags, data
    finally:
        stack.stop()


def test_lines_run_as_airflow_teams(teams) -> None:
    stack, dags, data = teams
    get = stack.get

    expected = {
        "cancelled_price_ab": "growth", "cancelled_price_coupon": "growth", "new_users_private_domain": "growth",
        "privacy_worry_tutorial": "growth", "high_value_callback": "care", "nps_detractor_care": "care",
        "connection_probe_growth": "growth", "connection_probe_care": "care"}
    # A plan with a goal brings its daily results DAG along, in its own line's bundle.
    expected |= {f"{p.stem}__results": line for line in LINES for p in (dags / "plans" / line).glob("*.yaml")
                 if p.name != "line.yaml" and load_plan(p, check_files=False).goal is not None}

    def bundles():
        found = {d["dag_id"]: d["bundle_name"] for d in get("dags?limit=100")["dags"]}
        return found if len(found) == len(expected) else None

    assert wait_for("the plans of both lines", bundles, timeout=240) == expected
    assert get("importErrors")["import_errors"] == []
    # The Code tab: the DAG's source is the plan's YAML, versioned.
    source = get(f"dagSources/{PLAN}")
    assert source["content"] == (dags / "plans" / "growth" / f"{PLAN}.yaml").read_text()
    assert source["version_number"] == 1

    # The plan and each line's connection probe run side by side.
    run_id = stack.trigger(PLAN, {"sample": 100})
    probes = {line: stack.trigger(f"connection_probe_{line}") for line in LINES}
    run = wait_for("the run to finish", lambda: (d := get(f"dags/{PLAN}/dagRuns/{run_id}"))["state"]
                   in ("success", "failed") and d, timeout=300)
    assert run["state"] == "success" and run["triggering_user_name"] == "alice"
    tis = get(f"dags/{PLAN}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    states = [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    assert {t["pool"] for t in tis} == {"c2b_growth"} and {t["state"] for t in tis} == {"success"}, states
    report = json.loads(next(p for p in (data / "reports" / PLAN).glob("*.json")
                             if json.loads(p.read_text())["run"] == run_id).read_text())
    assert report["audit"]["triggered_by"] == "alice" and report["audit"]["trigger"] == "manual"
    assert report["audit"]["line"] == "growth" and report["audit"]["params"]["sample"] == 100
    assert report["audience"]["global_holdout"] > 0
    # The audit went to the results store with the report: the record `c2b audit` and the Results view read.
    from c2b.results.store import DuckDBResultsStore

    stored = DuckDBResultsStore(data / "results.duckdb").audit(PLAN, run_id)
    assert stored is not None and stored["triggered_by"] == "alice" and stored["line"] == "growth"
    assert stored["plan_sha256"] == report["audit"]["plan_sha256"] and stored["status"] == report["status"]

    # A task of one line reads its own team's connection and the platform's, never the other team's:
    # the execution API answers the task with the connections of the task's team and those without one.
    for line, probe_run in probes.items():
        dag_id = f"connection_probe_{line}"
        state = stack.wait_for_run(dag_id, probe_run, timeout=180)
        assert state == "success", [(t["task_id"], t["state"]) for t in stack.task_instances(dag_id, probe_run)]
        got = get(f"dags/{dag_id}/dagRuns/{probe_run}/taskInstances/read_connections/xcomEntries/return_value"
                  "?deserialize=true")["value"]
        other = next(n for n in LINES if n != line)
        assert got[team_conn(line)] == f"{line}.secret.example", got
        assert got[team_conn(other)] == f"not found: The conn_id `{team_conn(other)}` isn't defined", got
        assert got["c2b_redis"] == "127.0.0.1", got
