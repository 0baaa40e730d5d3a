"""The business lines as Airflow teams (multi-team mode) under a live api-server, dag-processor and
scheduler: each line folder is a team's DAG bundle, its plans run in the team's pool on the team's
executor, the run records the user who triggered it, and the Code tab serves the plan's YAML."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from c2b.plan.lines import multi_team_env

from devtools.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
PLAN = "cancelled_price_coupon"  # growth line, outbox channel: needs only c2b_redis and c2b_warehouse


def _wait(what: str, check, timeout: float = 240):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, KeyError, ValueError, OSError) as exc:
            last = exc
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


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
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(multi_team_env(dags / "plans", f"http://127.0.0.1:{port}/execution/"))
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:admin:growth|care",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        # Platform connections every line shares (no team); a line's own would carry its team.
        "AIRFLOW_CONN_C2B_REDIS": f"{redis_server.url}/?db=0",
        "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(demo_warehouse)}),
        "C2B_DATA_DIR": str(data)})

    def airflow(*args: str) -> None:
        subprocess.run([AIRFLOW, *args], env=env, cwd=base, check=True, capture_output=True, timeout=300)

    airflow("db", "migrate")
    for line, pool in (("growth", "c2b_growth"), ("care", "c2b_care")):
        airflow("teams", "create", line)
        airflow("pools", "set", pool, "8", f"{line} line", "--team-name", line)
    procs = []
    try:
        for name, args in (("api-server", ["api-server", "--port", str(port), "--workers", "1"]),
                           ("dag-processor", ["dag-processor"]), ("scheduler", ["scheduler"])):
            log = open(base / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen([AIRFLOW, *args], env=env, cwd=base, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True), log))
        url = f"http://127.0.0.1:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"

        def token() -> str | None:
            r = requests.post(f"{url}/auth/token", timeout=30,
                              json={"username": "alice", "password": json.loads(passwords.read_text())["alice"]})
            return r.json()["access_token"] if r.status_code in (200, 201) else None

        headers = {"Authorization": f"Bearer {_wait('a token for alice', token)}"}
        yield url, headers, dags, data
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()


def test_lines_run_as_airflow_teams(teams) -> None:
    url, headers, dags, data = teams

    def get(path: str):
        r = requests.get(f"{url}/api/v2/{path}", headers=headers, timeout=60)
        r.raise_for_status()
        return r.json()

    def bundles():
        found = {d["dag_id"]: d["bundle_name"] for d in get("dags?limit=100")["dags"]}
        return found if len(found) == 6 else None

    assert _wait("the plans of both lines", bundles) == {
        "cancelled_price_ab": "growth", "cancelled_price_coupon": "growth", "new_users_private_domain": "growth",
        "privacy_worry_tutorial": "growth", "high_value_callback": "care", "nps_detractor_care": "care"}
    assert get("importErrors")["import_errors"] == []
    # The Code tab: the DAG's source is the plan's YAML, versioned.
    source = get(f"dagSources/{PLAN}")
    assert source["content"] == (dags / "plans" / "growth" / f"{PLAN}.yaml").read_text()
    assert source["version_number"] == 1

    requests.patch(f"{url}/api/v2/dags/{PLAN}?update_mask=is_paused", json={"is_paused": False}, headers=headers,
                   timeout=60).raise_for_status()
    r = requests.post(f"{url}/api/v2/dags/{PLAN}/dagRuns", headers=headers, timeout=60,
                      json={"logical_date": None, "conf": {"sample": 100}})
    r.raise_for_status()
    run_id = r.json()["dag_run_id"]
    run = _wait("the run to finish", lambda: (d := get(f"dags/{PLAN}/dagRuns/{run_id}"))["state"]
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
