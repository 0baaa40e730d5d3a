"""The Results view under a real Airflow with auth on (Simple auth manager, users with roles and teams).

One live Airflow (api-server, scheduler, dag-processor, LocalExecutor) in multi-team mode with two
DAG bundles: team ``team_a`` owns plan ``cancelled_price_ab`` (the example, runnable at any hour),
its results DAG and two DAGs scheduled on its Assets; team ``team_b`` owns plan ``other_team_plan``.
Users: ``admin`` (admin), ``alice`` (viewer of team_a), ``bob`` (viewer of team_b).

Why teams: the Simple auth manager's roles (viewer < user < op < admin) are global — a viewer may
read every DAG — so the only per-DAG access it can express is the team that owns a DAG's bundle
(``[core] multi_team``, Airflow 3.2+). ``requires_access_dag`` resolves that team from ``dag_id``.

- security: anonymous requests get 401 on every route of the view; alice gets 403 on team_b's
  plan (as Airflow's own REST API answers her) and bob on team_a's;
- asset events: a finished plan run emits ``c2b://plans/<plan>/report`` with its counts, and the
  DAG scheduled on it runs, having consumed that event; the plan's results DAG then emits
  ``c2b://plans/<plan>/results`` with the runs it counted, and the DAG scheduled on that runs too;
- the browser: headless Debian chromium, logged in as alice by the UI's session cookie, opens the
  Results view of the finished run; the numbers on the page equal ``results_page()`` read from the
  results store by this test; the run's Results tab inside Airflow's UI shows the view too.
  Screenshots go to the test's tmp dir (and to ``docs/results-view.png`` / ``docs/results-tab.png``
  with ``C2B_UPDATE_SCREENSHOT=1``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from c2b.airflow.dag_factory import find_plan_file
from test_results_view import assert_page_shows, audit_shown

from devtools.airflow_stack import (
    FAST_PARSING,
    LOCAL,
    AirflowStack,
    base_env,
    free_port,
    simple_auth_settings,
    team_bundles_settings,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
# Team A's plan is the A/B example plan (made runnable at any hour), under its own name.
PLAN_A, PLAN_B = "cancelled_price_ab", "other_team_plan"
DOWNSTREAM, AFTER_RESULTS = "after_report_live", "after_results_live"
USERS = {"admin": ("admin", None), "alice": ("viewer", "team_a"), "bob": ("viewer", "team_b")}
PASSWORD = "pw-{}-live"
WAREHOUSE_USERS = 100_000
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]

DOWNSTREAM_DAG = '''\
"""A team's own DAG scheduled on a plan's Asset: runs once per event (airflow dag)."""
from datetime import datetime

from airflow.sdk import DAG, Asset, task

with DAG("{dag_id}", schedule=[Asset(uri="{uri}")], start_date=datetime(2026, 1, 1), catchup=False,
         tags=["c2b"]):

    @task
    def read_event(triggering_asset_events=None):
        return [e.extra for events in triggering_asset_events.values() for e in events]

    read_event()
'''


def live_plan(plan_id: str) -> str:
    """Return the A/B example plan as a plan for a live test: any hour, the outbox channel, manual."""
    plan = yaml.safe_load((find_plan_file(ROOT / "dags" / "plans", "cancelled_price_ab")).read_text())
    plan["id"] = plan_id
    plan["schedule"] = None
    plan["window"].pop("send_hours", None)  # the test runs at any hour of the day
    plan["audience"].pop("exclude", None)
    for touch in plan["touches"]:
        touch["channel"] = "outbox"
        touch.pop("connection", None)
    plan["delivery"] = {"shards": 4, "retry_delay_seconds": 1}
    return yaml.safe_dump(plan, sort_keys=False)


class AuthedAirflow:
    """The live Airflow (an :class:`AirflowStack` whose REST calls carry the admin's token) and this
    test's folders and settings."""

    def __init__(self, stack: AirflowStack, dags: Path, data: Path) -> None:
        self.stack, self.url, self.env = stack, stack.url, stack.env
        self.dags, self.data = dags, data
        self.get, self.unpause = stack.get, stack.unpause

    def wait(self, what: str, check: Any, timeout: float = 180) -> Any:
        return wait_for(what, check, timeout)

    def trigger(self, dag_id: str) -> str:
        return self.stack.trigger(dag_id)


def token(url: str, user: str) -> str:
    r = requests.post(f"{url}/auth/token", json={"username": user, "password": PASSWORD.format(user)}, timeout=10)
    assert r.status_code in (200, 201), r.text
    return r.json()["access_token"]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Iterator[AuthedAirflow]:
    from devtools.demo_warehouse import build_demo_warehouse

    base = tmp_path_factory.mktemp("results_live")
    home, data = base / "home", base / "c2b"
    home.mkdir()
    for team, plans in (("team_a", [PLAN_A]), ("team_b", [PLAN_B])):
        folder = base / team
        (folder / "plans").mkdir(parents=True)
        shutil.copy(ROOT / "dags" / "c2b_plans.py", folder)
        for plan_id in plans:
            (folder / "plans" / f"{plan_id}.yaml").write_text(live_plan(plan_id))
    for dag_id, what in ((DOWNSTREAM, "report"), (AFTER_RESULTS, "results")):
        (base / "team_a" / f"{dag_id}.py").write_text(
            DOWNSTREAM_DAG.format(dag_id=dag_id, uri=f"c2b://plans/{PLAN_A}/{what}"))
    # Its own demo warehouse: this test adds post-touch orders to it, and with 100k users the run's
    # ~3.6k users are enough for the planted uplift to show (the session's 20k give ~700).
    warehouse = base / "warehouse.duckdb"
    build_demo_warehouse(warehouse, users=WAREHOUSE_USERS, seed=42)
    passwords = base / "passwords.json"
    passwords.write_text(json.dumps({u: PASSWORD.format(u) for u in USERS}))
    port = free_port()
    env = {**base_env(home=home, dags=base / "team_a", port=port, executor=LOCAL), **FAST_PARSING,
           **team_bundles_settings({f"{team}_dags": (team, base / team) for team in ("team_a", "team_b")}),
           **simple_auth_settings({u: (role, [team] if team else []) for u, (role, team) in USERS.items()},
                                  passwords),
           "AIRFLOW_CONN_C2B_REDIS": f"{redis_server.url}/?db=0",
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(warehouse)}),
           "C2B_DATA_DIR": str(data)}
    stack = AirflowStack(home, env, LOCAL, inherit_airflow_env=False)
    try:
        stack.start(setup=[["teams", "sync"]], timeout=240)
        yield AuthedAirflow(stack.login("admin", PASSWORD.format("admin")), base, data)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def finished_run(airflow: AuthedAirflow) -> str:
    """Run plan A to the end under the scheduler; return its run id."""
    def loaded() -> bool:
        dags = {d["dag_id"] for d in airflow.get("dags?limit=100")["dags"]}
        return {PLAN_A, PLAN_B, DOWNSTREAM, AFTER_RESULTS, f"{PLAN_A}__results"} <= dags

    airflow.wait("the plans and the downstream DAGs to load", loaded, timeout=120)
    airflow.unpause(DOWNSTREAM)
    airflow.unpause(AFTER_RESULTS)
    run_id = airflow.trigger(PLAN_A)

    def finished() -> str | None:
        state = airflow.get(f"dags/{PLAN_A}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    state = airflow.wait("the plan run to finish", finished, timeout=240)
    tis = airflow.get(f"dags/{PLAN_A}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    assert state == "success", [(t["task_id"], t["map_index"], t["state"]) for t in tis]
    return run_id


ROUTES = ("/c2b-results/dags/{dag}", "/c2b-results/dags/{dag}/runs/{run}", "/c2b-results/api/dags/{dag}/runs/{run}")


def test_anonymous_and_other_teams_are_refused(airflow: AuthedAirflow) -> None:
    """No token: 401 on every route. A viewer of the other team: 403, as Airflow's REST API answers."""
    airflow.wait("the plans to load", lambda: {PLAN_A, PLAN_B} <= {d["dag_id"] for d in
                                                                   airflow.get("dags?limit=100")["dags"]}, timeout=120)
    alice, bob = token(airflow.url, "alice"), token(airflow.url, "bob")
    for route in ROUTES:
        for dag in (PLAN_A, PLAN_B):
            path = airflow.url + route.format(dag=dag, run="manual__x")
            assert requests.get(path, timeout=10).status_code == 401, path
            assert requests.get(path, headers={"Authorization": "Bearer not-a-token"}, timeout=10).status_code \
                in (401, 403), path
            assert requests.get(path, cookies={"_token": "forged"}, timeout=10).status_code in (401, 403), path
        other = [(alice, PLAN_B), (bob, PLAN_A)]
        for who, dag in other:
            r = requests.get(airflow.url + route.format(dag=dag, run="manual__x"),
                             headers={"Authorization": f"Bearer {who}"}, timeout=10)
            assert r.status_code == 403, (route, dag, r.status_code, r.text[:200])
        # A user of the DAG's own team gets past auth (404 here: that run has no results).
        for who, dag in [(alice, PLAN_A), (bob, PLAN_B)]:
            r = requests.get(airflow.url + route.format(dag=dag, run="manual__x"),
                             headers={"Authorization": f"Bearer {who}"}, timeout=10)
            assert r.status_code == 404, (route, dag, r.status_code, r.text[:200])
    # the view answers exactly as Airflow's own API does for the same users
    for who, dag, code in [(alice, PLAN_A, 200), (alice, PLAN_B, 403), (bob, PLAN_A, 403), (bob, PLAN_B, 200)]:
        r = requests.get(f"{airflow.url}/api/v2/dags/{dag}/dagRuns", headers={"Authorization": f"Bearer {who}"},
                         timeout=10)
        assert r.status_code == code, (dag, r.status_code)


def test_a_finished_run_emits_its_report_asset_and_triggers_the_downstream_dag(
        airflow: AuthedAirflow, finished_run: str) -> None:
    summary = json.loads(next((airflow.data / "reports" / PLAN_A).glob("*.json")).read_text())

    def downstream_run() -> dict | None:
        runs = airflow.get(f"dags/{DOWNSTREAM}/dagRuns?limit=10")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return done[0] if done else None

    run = airflow.wait("the DAG scheduled on the report asset to run", downstream_run, timeout=120)
    assert run["state"] == "success" and run["run_type"] == "asset_triggered"
    events = airflow.get(f"dags/{DOWNSTREAM}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")["asset_events"]
    assert [(e["uri"], e["source_dag_id"], e["source_run_id"]) for e in events] == [
        (f"c2b://plans/{PLAN_A}/report", PLAN_A, finished_run)]
    extra = events[0]["extra"]
    assert extra["run_id"] == finished_run and extra["status"] == "complete"
    assert extra["audience"] == summary["audience"] and extra["per_touch"] == summary["per_touch"]
    assert extra["outcomes"]["sent"] == sum(n for k, n in summary["outcomes"].items() if k.endswith("|sent")) > 0

    # Attribution updates the plan's results Asset, and a DAG scheduled on that runs in turn.
    airflow.trigger(f"{PLAN_A}__results")

    def after_results() -> list[dict] | None:
        for r in airflow.get(f"dags/{AFTER_RESULTS}/dagRuns?limit=10")["dag_runs"]:
            if r["state"] == "success":
                found = airflow.get(f"dags/{AFTER_RESULTS}/dagRuns/{r['dag_run_id']}/upstreamAssetEvents")
                counted = [e for e in found["asset_events"] if finished_run in (e["extra"] or {}).get("runs", {})]
                if counted:
                    return counted
        return None

    counted = airflow.wait("the DAG scheduled on the results asset to run", after_results, timeout=180)
    assert counted[0]["uri"] == f"c2b://plans/{PLAN_A}/results"
    assert counted[0]["source_dag_id"] == f"{PLAN_A}__results"
    assert set(counted[0]["extra"]["runs"][finished_run]) == {"coupon", "red_packet", "control"}


class Chromium:
    """Headless Debian chromium driven over the DevTools protocol (a cookie, a page, its DOM, a screenshot)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("chromium")
        if exe is None:
            pytest.fail("chromium is missing: `scripts/dev.sh test` installs it (ensure_chromium in scripts/lib.sh)")
        self.port = free_port()
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--remote-debugging-port={self.port}",
                                      f"--user-data-dir={workdir / 'chromium'}", "--window-size=1000,1400",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                targets = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                page = next(t for t in targets if t["type"] == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise
                time.sleep(0.2)
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=10)
        self.next_id = 0

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]

    def wait_event(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1))).get("method") != name:
            pass

    def open(self, url: str) -> tuple[int, str]:
        """Load ``url``; return its HTTP status and the DOM as HTML."""
        self.call("Page.enable")
        self.call("Network.enable")
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": "Page.navigate", "params": {"url": url}}))
        status = 0
        deadline = time.monotonic() + 30
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("method") == "Network.responseReceived" and msg["params"]["type"] == "Document":
                status = msg["params"]["response"]["status"]
            if msg.get("method") == "Page.loadEventFired":
                break
        html = self.call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                         returnByValue=True)["result"]["value"]
        return status, html

    def screenshot(self, path: Path, width: int = 1000, height: int | None = None) -> None:
        """Save a PNG of the page: its full height unless ``height`` is given."""
        if height is None:
            height = self.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                               returnByValue=True)["result"]["value"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=int(height), deviceScaleFactor=1,
                  mobile=False)
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def test_the_results_page_in_a_browser_shows_the_results_store(
        airflow: AuthedAirflow, finished_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from c2b.results.page import results_page

    for name in ("C2B_DATA_DIR", "AIRFLOW_CONN_C2B_WAREHOUSE"):  # the stores the live components use
        monkeypatch.setenv(name, airflow.env[name])
    attribute(airflow, finished_run)
    page = results_page(PLAN_A, finished_run)
    assert page["run_id"] == finished_run and page["variants"] and page["uplifts"]
    assert sum(v["converted"] for v in page["variants"]) > 0 and page["daily"]

    browser = Chromium(tmp_path)
    try:
        browser.call("Network.setCookie", name="_token", value=token(airflow.url, "alice"), url=airflow.url)
        status, html = browser.open(f"{airflow.url}/c2b-results/dags/{PLAN_A}/runs/{finished_run}")
        assert status == 200, html[:500]
        assert_page_shows(html, page)
        assert f"Results of {PLAN_A}" in html and page["srm"]["ok"] is not None
        # The run's audit, stored with its report: this plan file's hash, who triggered it, its params.
        audit = page["audit"]
        plan_file = airflow.dags / "team_a" / "plans" / f"{PLAN_A}.yaml"
        assert audit["plan_sha256"] == hashlib.sha256(plan_file.read_bytes()).hexdigest()
        assert audit["triggered_by"] == "admin" and audit["trigger"] == "manual" and audit["status"] == "complete"
        shown = audit_shown(html)
        assert shown["plan_sha256"] == audit["plan_sha256"] and shown["triggered_by"] == "admin"
        assert shown["git_commit"] == "none (no git checkout)"  # the test's plan folder is no git checkout
        assert json.loads(shown["params"]) == audit["params"] == {"dry_run": False, "sample": None,
                                                                   "only_touches": []}
        shot = tmp_path / "results-view.png"
        browser.screenshot(shot)
        # The same page as the DAG's tab (latest run) and, for bob, a refusal.
        status, latest = browser.open(f"{airflow.url}/c2b-results/dags/{PLAN_A}")
        assert status == 200 and finished_run in latest
        # Inside Airflow's own UI: the run's "Results" tab embeds the view (same origin, same cookie).
        browser.open(f"{airflow.url}/dags/{PLAN_A}/runs/{finished_run}/plugin/c2b-run-results")
        embedded = airflow.wait("the Results tab to show the view", lambda: browser.call(
            "Runtime.evaluate", returnByValue=True, expression=(
                "(() => { const f = document.querySelector('iframe'); const d = f && f.contentDocument;"
                " return d && d.getElementById('srm') ? f.src : null; })()"))["result"].get("value"), timeout=60)
        assert embedded.endswith(f"/c2b-results/dags/{PLAN_A}/runs/{quote(finished_run, safe='')}"), embedded
        browser.screenshot(tmp_path / "results-tab.png", width=1400, height=1600)
        browser.call("Network.setCookie", name="_token", value=token(airflow.url, "bob"), url=airflow.url)
        status, _ = browser.open(f"{airflow.url}/c2b-results/dags/{PLAN_A}/runs/{finished_run}")
        assert status == 403
    finally:
        browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("C2B_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "results-view.png")
        shutil.copy(tmp_path / "results-tab.png", ROOT / "docs" / "results-tab.png")


def attribute(airflow: AuthedAirflow, run_id: str) -> None:
    """Advance the demo clock past the run's window (planted post-touch orders), then attribute as of then.

    The same steps as ``c2b demo`` (:func:`c2b.cli.demo_results`), on this test's plan file and its
    own copy of the demo warehouse.
    """
    from datetime import timedelta

    from c2b.airflow.resources import get_results_store, get_warehouse
    from c2b.plan.load import load_plan
    from c2b.results.attribution import attribute as attribute_run

    from devtools.demo_warehouse import add_post_touch_orders

    plan = load_plan(airflow.dags / "team_a" / "plans" / f"{PLAN_A}.yaml")
    assert plan.goal is not None
    store, warehouse = get_results_store(), get_warehouse()
    users = store.log_users(PLAN_A, run_id)
    offers = {t.name: t.offer.type for t in plan.touches if t.offer}
    reached = {uid: offers[touch] for uid, touch in store.sent_touches(PLAN_A, run_id) if touch in offers}
    assert add_post_touch_orders(warehouse.path, PLAN_A, run_id, [(u, reached.get(u), t) for u, _, t, _ in users])
    clock = max(t for _, _, t, _ in users) + timedelta(days=plan.goal.window_days, minutes=1)
    attribute_run(plan, run_id, store, warehouse, as_of=clock)
