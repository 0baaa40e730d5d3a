"""Run artifacts on S3 under a real Airflow (api-server, scheduler, dag-processor, LocalExecutor).

Every task runs in a process of its own, so the extract's staging object, which ``load_shards``
reads, and the outbox and report objects cross processes only through the store: a real S3 API on
loopback (``moto`` in server mode), credentials and endpoint from an Airflow connection.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from devtools.airflow_stack import FAST_PARSING, LOCAL, AirflowStack, base_env, free_port, wait_for
from devtools.servers import MotoS3Server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "c2b-live"
PLAN = """\
id: storage_live
description: A plan whose run artifacts live on S3.
schedule: null
audience:
  segment: cancelled_for_reason.sql
  params: {reason: price_too_low, days: 30}
touches:
  - name: nudge
    channel: outbox
    template: "Hi {{ nickname }}"
delivery:
  shards: 4
  retry_delay_seconds: 1
"""


@pytest.mark.timeout(600)
def test_plan_run_on_s3_under_a_real_scheduler(tmp_path: Path, moto_s3: MotoS3Server, redis_server,
                                               demo_warehouse: Path) -> None:
    home, dags, data = tmp_path / "home", tmp_path / "dags", tmp_path / "c2b"
    dags.mkdir(parents=True)
    shutil.copy(ROOT / "dags" / "plans.yaml", dags)
    (dags / "plans").mkdir()
    (dags / "plans" / "storage_live.yaml").write_text(PLAN)
    prefix = f"live-{uuid.uuid4().hex[:8]}"
    env = {**base_env(home=home, dags=dags, port=free_port(), executor=LOCAL), **FAST_PARSING,
           "AIRFLOW_CONN_C2B_REDIS": f"{redis_server.url}/?db=0",
           "AIRFLOW_CONN_C2B_WAREHOUSE": json.dumps({"conn_type": "duckdb", "host": str(demo_warehouse)}),
           "AIRFLOW_CONN_C2B_S3": moto_s3.airflow_conn(),
           "C2B_DATA_DIR": str(data), "C2B_DATA_URL": f"s3://c2b_s3@{BUCKET}/{prefix}"}
    stack = AirflowStack(home, env, LOCAL).start(wait=True)
    try:
        wait_for("the plan", lambda: "storage_live" in {d["dag_id"] for d in stack.get("dags?limit=100")["dags"]}, 180)
        run_id = stack.trigger("storage_live")
        path = f"dags/storage_live/dagRuns/{run_id}"
        state = wait_for("the run to finish", lambda: stack.get(path)["state"] in ("success", "failed")
                         and stack.get(path)["state"], 300)
        tis = stack.get(f"{path}/taskInstances?limit=100")["task_instances"]
    finally:
        stack.stop()
    assert state == "success", [(t["task_id"], t["map_index"], t["state"], t["try_number"]) for t in tis]
    assert all(t["try_number"] == 1 for t in tis)
    s3 = moto_s3.client()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", []))
    from c2b.settings import safe_name

    run = safe_name(run_id)
    report_key = f"{prefix}/reports/storage_live/{run}.json"
    assert report_key in keys and f"{prefix}/staging/storage_live/{run}.parquet.extract.json" in keys, keys
    assert f"{prefix}/staging/storage_live/{run}.parquet" not in keys  # deleted by cleanup
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=report_key)["Body"].read())
    assert summary["status"] == "complete" and summary["staging_path"].startswith(f"s3://c2b_s3@{BUCKET}/{prefix}/")
    parts = [k for k in keys if k.startswith(f"{prefix}/outbox/storage_live/{run}/outbox.jsonl.d/")]
    lines = [json.loads(x) for k in parts for x in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read().splitlines()]
    assert len(lines) == summary["outcomes"]["all|nudge|sent"] == summary["audience"]["kept"] > 100
    assert not any((data / d).exists() for d in ("staging", "outbox", "reports"))
