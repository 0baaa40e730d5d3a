"""Personal data kept short (#11.10): the demo's phone numbers never reach staging, logs, XCom or
reports, and the staging file is gone once the run is cleaned up."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import duckdb
import pytest
import yaml

PLAN = "phone_free_callback"
ROOT = Path(__file__).resolve().parents[2]


def _plan_folder(dags: Path) -> Path:
    folder = dags / "plans"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dags" / "c2b_plans.py", dags / "c2b_plans.py")
    plan = {
        "id": PLAN,
        # high_value_cancellations.sql returns each user's phone; the template does not use it.
        "audience": {"segment": "high_value_cancellations.sql", "params": {"min_price": 500, "days": 30}},
        "touches": [{"name": "note", "channel": "outbox",
                     "template": "Hi {{ nickname }}, about your {{ last_item }}: we will call you."}],
        "delivery": {"shards": 2, "page_size": 100, "retries": 0},
    }
    (folder / f"{PLAN}.yaml").write_text(yaml.safe_dump(plan))
    return folder


def _phones(warehouse: Path) -> list[str]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT phone FROM users WHERE phone IS NOT NULL").fetchall()]


@pytest.mark.timeout(240)
def test_a_demo_run_leaves_no_phone_number_in_logs_xcom_reports_or_staging(
        c2b_env: Path, demo_warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from airflow import settings
    from c2b import steps
    from c2b.airflow.dag_factory import build_dags
    from c2b.audience.warehouse import DuckDBWarehouse

    dags_folder = tmp_path / "dags"
    plans = _plan_folder(dags_folder)
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(dags_folder))
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    dags, errors = build_dags(plans)
    assert not errors
    phones = _phones(demo_warehouse)
    assert len(phones) > 1000
    phone_re = re.compile(r"(?<!\d)(" + "|".join(map(re.escape, phones)) + r")(?!\d)")

    # The staging file keeps uid, variant and what templates read (+ timezone), never the phone.
    plan = dags[PLAN]._c2b_plan
    extract = steps.step_extract(plan, "probe", DuckDBWarehouse(demo_warehouse))
    import pyarrow.parquet as pq

    assert extract["counts"]["kept"] > 50
    assert set(pq.read_schema(extract["path"]).names) <= {"uid", "variant", "nickname", "last_item", "timezone"}

    caplog.set_level(logging.DEBUG)
    dr = dags[PLAN].test()
    assert str(getattr(dr.state, "value", dr.state)) == "success"
    out, err = capfd.readouterr()
    logs = out + err + caplog.text
    assert "run summary" in logs, "the run's logs were not captured"
    assert not phone_re.search(logs), f"a phone number in the task logs: {phone_re.search(logs)}"

    xcoms = []
    for ti in dr.get_task_instances():
        value = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index, key="return_value")
        xcoms.append(json.dumps(value, default=str))
    assert not phone_re.search("\n".join(xcoms))
    written = [p.read_text(errors="replace") for p in (c2b_env / "reports").rglob("*") if p.is_file()]
    written += [p.read_text(errors="replace") for p in (c2b_env / "outbox").rglob("*") if p.is_file()]
    assert written and not phone_re.search("\n".join(written))
    # Cleanup deleted the run's staging file.
    assert not list((c2b_env / "staging" / PLAN).glob(f"*{dr.run_id[-8:].replace(':', '_')}*"))
    assert [p.name for p in (c2b_env / "staging" / PLAN).glob("*.parquet")] == [Path(extract["path"]).name]


def test_retention_purges_old_outboxes_and_reports(c2b_env: Path) -> None:
    import os
    import time

    from c2b.results.retention import purge_expired

    old_outbox = c2b_env / "outbox" / "p" / "old_run"
    new_report = c2b_env / "reports" / "p" / "new_run.json"
    old_report = c2b_env / "reports" / "p" / "old_run.json"
    for f in (old_outbox / "part-0.jsonl", new_report, old_report):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")
    month_ago = time.time() - 31 * 86400
    for f in (old_outbox / "part-0.jsonl", old_report):
        os.utime(f, (month_ago, month_ago))
    assert purge_expired("p", 30) == 2
    assert not old_outbox.exists() and not old_report.exists() and new_report.exists()


def test_channel_connection_secrets_are_masked_in_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway token (password) and secret extras are masked: Airflow's secrets masker registers
    them when the Connection is read (a guard: this held before #11.10 too)."""
    from airflow.sdk._shared.secrets_masker.secrets_masker import redact
    from c2b.airflow.resources import make_channels

    from devtools.deliverkit import make_plan, plan_dict

    token, api_key = "tok-5f3e9a1c77", "key-0b8d2e4f19"
    monkeypatch.setenv("AIRFLOW_CONN_C2B_PUSH", json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": 9, "schema": "push", "password": token,
         "extra": {"api_key": api_key, "batch_size": 10}}))
    channels = make_channels(make_plan(plan_dict("p_secrets")), "r1")
    assert channels["t0"].config.token == token
    line = f"gateway answered 401 for token {token} and api_key {api_key}"
    masked = str(redact(line))
    assert token not in masked and api_key not in masked, masked
