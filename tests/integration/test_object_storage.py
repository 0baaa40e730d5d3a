"""Run artifacts on shared storage (#13.2): a real S3 API on loopback (moto in server mode) and file://.

A plan's extract -> load -> deliver (outbox touch) -> report -> cleanup through ``C2B_DATA_URL``;
the store unreachable (the task fails with the URL and the cause, and Airflow retries it); a worker
killed mid-extract (no partial staging file is ever taken for a whole one: the retry extracts the
same audience); an audience that outgrows ``max_shard_members`` with a fixed shard count (fails
without retries).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from c2b.airflow.dag_factory import build_dags, find_plan_file

from devtools.servers import MotoS3Server, free_port

ROOT = Path(__file__).resolve().parents[2]
PLAN = "cancelled_price_coupon"
BUCKET = "c2b-artifacts"
CONN = "c2b_s3_test"


@pytest.fixture
def s3_url(moto_s3: MotoS3Server, monkeypatch: pytest.MonkeyPatch, c2b_env: Path) -> str:
    """Point the run artifacts at a fresh prefix of the moto bucket (credentials: an Airflow connection)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", moto_s3.airflow_conn())
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("C2B_DATA_URL", f"s3://{CONN}@{BUCKET}/{prefix}")
    return prefix


def _keys(server: MotoS3Server, prefix: str) -> list[str]:
    found = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return sorted(o["Key"] for o in found)


def _read(server: MotoS3Server, key: str) -> bytes:
    return server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _plan_dags(tmp_path: Path, **delivery: Any) -> Any:
    """The demo plan with ``delivery`` overrides, built from a plans folder of its own."""
    plans = tmp_path / "plans"
    plans.mkdir(exist_ok=True)
    data = yaml.safe_load(find_plan_file(ROOT / "dags" / "plans", PLAN).read_text())
    data["delivery"] = {**data.get("delivery", {}), **delivery}
    (plans / f"{PLAN}.yaml").write_text(yaml.safe_dump(data))
    dags, errors = build_dags(plans, PLAN)
    assert not errors
    return dags[PLAN]


def _tries(dr: Any) -> dict[tuple[str, int], tuple[str, int]]:
    return {(ti.task_id, ti.map_index): (str(getattr(ti.state, "value", ti.state)), ti.try_number)
            for ti in dr.get_task_instances()}


def _state(dr: Any) -> str:
    return str(getattr(dr.state, "value", dr.state))


# --- a whole run through s3:// and file:// ---------------------------------------------------------

def test_plan_run_through_s3(moto_s3: MotoS3Server, s3_url: str, c2b_env: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from c2b.settings import safe_name

    dr = _plan_dags(tmp_path, shards=4).test()
    assert _state(dr) == "success", _tries(dr)
    assert set(_tries(dr).values()) == {("success", 1)}
    run = safe_name(dr.run_id)
    keys = _keys(moto_s3, s3_url)
    report_key = f"{s3_url}/reports/{PLAN}/{run}.json"
    marker_key = f"{s3_url}/staging/{PLAN}/{run}.parquet.extract.json"
    assert report_key in keys and marker_key in keys, keys
    assert f"{s3_url}/staging/{PLAN}/{run}.parquet" not in keys, "cleanup deletes the staging object"
    summary = json.loads(_read(moto_s3, report_key))
    assert summary["status"] == "complete"
    assert summary["staging_path"] == f"s3://{CONN}@{BUCKET}/{s3_url}/staging/{PLAN}/{run}.parquet"
    # The outbox: one object per batch (no append on S3), every message once.
    parts = [k for k in keys if k.startswith(f"{s3_url}/outbox/{PLAN}/{run}/outbox.jsonl.d/part-")]
    assert len(parts) > 1
    messages = [json.loads(line) for k in parts for line in _read(moto_s3, k).decode().splitlines()]
    sent = summary["outcomes"]["coupon|coupon_push|sent"]
    assert sent > 100 and len(messages) == sent and len({m["idempotency_key"] for m in messages}) == sent
    # The extract marker is what load_shards used: its path is the staging URL, its counts the report's.
    marker = json.loads(_read(moto_s3, marker_key))
    assert marker["path"] == summary["staging_path"] and marker["counts"] == summary["audience"]
    # Nothing went to the local data folder but local files (logs, the results DuckDB).
    assert not any((c2b_env / d).exists() for d in ("staging", "outbox", "reports"))
    # Readers: `c2b report` reads the report from S3; retention purges the plan's outbox and reports.
    from c2b.cli import main as cli

    assert cli(["report", PLAN]) == 0
    assert report_key in capsys.readouterr().out
    from c2b.results.retention import purge_expired

    assert purge_expired(PLAN, 30) == 0, "nothing is older than 30 days"
    assert purge_expired(PLAN, 30, now=time.time() + 31 * 86400) == 2  # the run's outbox folder + its report
    left = _keys(moto_s3, s3_url)
    assert not [k for k in left if "/outbox/" in k or "/reports/" in k], left


def test_plan_run_through_file_url(c2b_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``C2B_DATA_URL=file://...`` (what several machines sharing a mounted folder set)."""
    from c2b.settings import safe_name

    shared = tmp_path / "shared"
    monkeypatch.setenv("C2B_DATA_URL", f"file://{shared}")
    dr = _plan_dags(tmp_path, shards=4).test()
    assert _state(dr) == "success", _tries(dr)
    run = safe_name(dr.run_id)
    summary = json.loads((shared / "reports" / PLAN / f"{run}.json").read_text())
    assert summary["staging_path"] == f"file://{shared}/staging/{PLAN}/{run}.parquet"
    assert (shared / "staging" / PLAN / f"{run}.parquet.extract.json").exists()
    assert not (shared / "staging" / PLAN / f"{run}.parquet").exists()
    assert not list((shared / "staging").rglob("*.tmp")), "no temporary file left behind"
    lines = (shared / "outbox" / PLAN / run / "outbox.jsonl").read_text().splitlines()
    assert len(lines) == summary["outcomes"]["coupon|coupon_push|sent"] > 100
    assert not any((c2b_env / d).exists() for d in ("staging", "outbox", "reports"))


# --- faults ------------------------------------------------------------------------------------------

def test_unreachable_store_fails_with_url_and_cause_and_is_retried(
        c2b_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from c2b import steps
    from c2b.airflow import resources
    from c2b.storage import StorageError

    port = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_C2B_S3_DOWN", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1",
                  "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}}))
    monkeypatch.setenv("C2B_DATA_URL", f"s3://c2b_s3_down@{BUCKET}/down")
    dag = _plan_dags(tmp_path, retries=1, retry_delay_seconds=0)

    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        steps.step_extract(dag._c2b_plan, "manual__down", resources.get_warehouse(), redis=resources.get_redis())
    message = str(err.value)
    assert f"s3://c2b_s3_down@{BUCKET}/down/staging/{PLAN}/manual__down.parquet" in message, message
    assert f"127.0.0.1:{port}" in message and "Error" in message, message  # the cause: no endpoint there
    assert time.monotonic() - started < 60

    dr = dag.test()
    assert _state(dr) == "failed"
    tries = _tries(dr)
    assert tries[("extract_audience", -1)] == ("failed", 2), tries  # Airflow retried it: a transient error


def test_fixed_shard_count_too_small_fails_without_retries(c2b_env: Path, tmp_path: Path) -> None:
    dr = _plan_dags(tmp_path, shards=1, max_shard_members=10, retries=2, retry_delay_seconds=0).test()
    assert _state(dr) == "failed"
    tries = _tries(dr)
    assert tries[("extract_audience", -1)] == ("success", 1)
    assert tries[("load_shards", -1)] == ("failed", 1), tries  # a plan error: no retry


@pytest.mark.timeout(300)
def test_demo_prints_the_shard_count_error(tmp_path: Path, c2b_env: Path) -> None:
    """``c2b demo`` as a user runs it: the plan error line, not only "ended failed"."""
    _plan_dags(tmp_path, shards=1, max_shard_members=10, retries=2, retry_delay_seconds=30)
    code = ("import sys; from pathlib import Path; import c2b.cli as cli; "
            f"cli.PLANS_DIR = Path({str(tmp_path / 'plans')!r}); "
            f"sys.exit(cli.main(['demo', '--plan', '{PLAN}', '--dry-run']))")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "ended failed" in proc.stderr
    assert ("failed: load_shards: AirflowFailException: plan cancelled_price_coupon: delivery.shards: 1 would put "
            in proc.stderr), proc.stderr[-2000:]
    assert "use shards: " in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - started < 200, "no retry waited out its 30 s delay"


# --- a worker killed mid-extract ------------------------------------------------------------------

SLOW_EXTRACT = """
import sys, time
from c2b import steps
from c2b.airflow import resources
from c2b.airflow.dag_factory import build_dags
from c2b.audience.warehouse import DuckDBWarehouse
from pathlib import Path


class SlowWarehouse(DuckDBWarehouse):
    # The demo DuckDB warehouse, its batches spaced out so the test can kill the process mid-write.
    def record_batches(self, sql, params, batch_rows=100_000):
        for batch in super().record_batches(sql, params, batch_rows):
            yield batch
            print("batch", flush=True)
            time.sleep(0.05)


plan = build_dags(Path(sys.argv[1]), "cancelled_price_coupon")[0]["cancelled_price_coupon"]._c2b_plan
extract = steps.extract_audience
steps.extract_audience = lambda *a, **k: extract(*a, batch_rows=100, **k)  # row groups of 100: written as it goes
print("start", flush=True)
steps.step_extract(plan, sys.argv[2], SlowWarehouse(sys.argv[3]), redis=resources.get_redis())
print("done", flush=True)
"""


def _kill_mid_extract(tmp_path: Path, run_id: str, warehouse: Path, partial: Any) -> None:
    """Run the extract in a process of its own and SIGKILL it once ``partial()`` is true."""
    script = tmp_path / "slow_extract.py"
    script.write_text(SLOW_EXTRACT)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "plans"), run_id, str(warehouse)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        batches = 0
        for line in proc.stdout:
            batches += line.startswith("batch")
            if batches >= 3 and partial():
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _audience(source: Any) -> list[tuple[str, str]]:
    table = pq.read_table(source, columns=["uid", "variant"])
    return sorted(zip(table.column("uid").to_pylist(), table.column("variant").to_pylist(), strict=True))


def test_killed_mid_extract_on_file_leaves_no_staging_and_the_retry_extracts_the_same_audience(
        c2b_env: Path, demo_warehouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client) -> None:
    from c2b import steps
    from c2b.airflow import resources
    from c2b.store.shards import load_shards

    shared = tmp_path / "shared"
    monkeypatch.setenv("C2B_DATA_URL", f"file://{shared}")
    plan = _plan_dags(tmp_path)._c2b_plan
    staging = shared / "staging" / PLAN / "manual__killed.parquet"
    tmp = staging.with_name(staging.name + ".tmp")
    _kill_mid_extract(tmp_path, "manual__killed", demo_warehouse, lambda: tmp.exists() and tmp.stat().st_size > 0)
    # What the killed worker left: a partial temporary file, never the staging file or its marker.
    assert tmp.exists() and tmp.stat().st_size > 0
    assert not staging.exists() and not staging.with_name(staging.name + ".extract.json").exists()
    with pytest.raises(Exception, match="not a parquet file|magic bytes|Parquet"):
        pq.read_table(tmp)  # it is no Parquet file yet: taking it for the staging file would fail or lose users

    # The retry (another worker): extracts again, the same audience as an undisturbed extract.
    out = steps.step_extract(plan, "manual__killed", resources.get_warehouse(), redis=resources.get_redis())
    assert out["path"] == f"file://{staging}"
    assert staging.exists() and not tmp.exists()
    reference = steps.step_extract(plan, "manual__reference", resources.get_warehouse(), redis=resources.get_redis())
    assert _audience(str(staging)) == _audience(reference["path"][len("file://"):])
    assert out["counts"] == reference["counts"] and out["counts"]["kept"] > 100
    loaded = load_shards(redis_client, out["path"], PLAN, "manual__killed", 4)
    assert loaded.members == out["counts"]["kept"]


def test_killed_mid_extract_on_s3_leaves_no_object_and_the_retry_extracts_the_same_audience(
        moto_s3: MotoS3Server, s3_url: str, c2b_env: Path, demo_warehouse: Path, tmp_path: Path,
        redis_client) -> None:
    from c2b import steps
    from c2b.airflow import resources
    from c2b.storage import StorageMissing
    from c2b.store.shards import load_shards

    plan = _plan_dags(tmp_path)._c2b_plan
    key = f"{s3_url}/staging/{PLAN}/manual__killed.parquet"
    _kill_mid_extract(tmp_path, "manual__killed", demo_warehouse, lambda: True)
    assert _keys(moto_s3, s3_url) == [], "a killed upload leaves no object (and no marker)"
    url = f"s3://{CONN}@{BUCKET}/{key}"
    with pytest.raises(StorageMissing, match=url):
        load_shards(redis_client, url, PLAN, "manual__killed", 4)

    out = steps.step_extract(plan, "manual__killed", resources.get_warehouse(), redis=resources.get_redis())
    assert out["path"] == url
    assert _keys(moto_s3, s3_url) == [key, key + ".extract.json"]
    reference = steps.step_extract(plan, "manual__reference", resources.get_warehouse(), redis=resources.get_redis())
    import io

    assert _audience(io.BytesIO(_read(moto_s3, key))) == _audience(io.BytesIO(_read(moto_s3, reference["path"].split(
        f"{BUCKET}/", 1)[1])))
    assert out["counts"] == reference["counts"]
    loaded = load_shards(redis_client, url, PLAN, "manual__killed", 4)
    assert loaded.members == out["counts"]["kept"] > 100
    # A retried extract of a complete run reuses it (marker and staging both there).
    again = steps.step_extract(plan, "manual__killed", resources.get_warehouse(), redis=resources.get_redis())
    assert again == out


def test_failed_upload_is_aborted_not_completed(moto_s3: MotoS3Server, s3_url: str) -> None:
    """An error mid-write (not a kill) aborts the upload: nothing appears, not even at garbage collection."""
    import gc

    from c2b import storage

    path = storage.root() / "staging" / "x.bin"
    with pytest.raises(RuntimeError, match="boom"), storage.atomic_sink(path) as sink:
        sink.write(b"x" * (storage.UPLOAD_PART_BYTES + 1))  # one part uploaded: a multipart upload is open
        uploads = moto_s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        assert [u["Key"] for u in uploads] == [f"{s3_url}/staging/x.bin"]
        raise RuntimeError("boom")
    gc.collect()
    assert _keys(moto_s3, s3_url) == []
    assert not moto_s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads"), "the upload was aborted"
    storage.write_bytes(path, b"whole")
    assert _read(moto_s3, f"{s3_url}/staging/x.bin") == b"whole"


# --- a worker killed mid-load ---------------------------------------------------------------------

LOAD = """
import sys, time
import redis
from c2b.store import shards

# The load's batches spaced out (2 ms each, ~2 s for the 1,000 batches), so the test's kill lands
# mid-load on a fast machine too (unspaced, a load of 1M users once ended before it).
batches = shards._batches


def spaced(*args, **kwargs):
    for batch in batches(*args, **kwargs):
        yield batch
        time.sleep(0.002)


shards._batches = spaced
print("start", flush=True)
shards.load_shards(redis.Redis.from_url(sys.argv[1]), sys.argv[2], "p_load", "run-1", 16, batch_rows=1000)
print("done", flush=True)
"""


def test_killed_mid_load_from_s3_and_the_retry_loads_the_whole_audience(
        moto_s3: MotoS3Server, s3_url: str, redis_server, redis_client, tmp_path: Path) -> None:
    import io

    import pyarrow as pa
    from c2b import storage
    from c2b.store.shards import ShardKeys, load_shards, read_layout, read_page

    users = 1_000_000
    uids = [str(10_000_000 + 3 * i) for i in range(users)]
    buf = io.BytesIO()
    pq.write_table(pa.table({"uid": uids, "variant": ["a"] * users}), buf, row_group_size=50_000)
    url = str(storage.root() / "staging" / "p_load" / "run-1.parquet")
    storage.write_bytes(url, buf.getvalue())

    script = tmp_path / "load.py"
    script.write_text(LOAD)
    proc = subprocess.Popen([sys.executable, str(script), redis_server.url, url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            layout = read_layout(redis_client, "p_load", "run-1")
            if layout and layout["state"] == "loading" and redis_client.strlen(ShardKeys("p_load", "run-1", 1).packed):
                time.sleep(0.3)  # well into the writes
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert read_layout(redis_client, "p_load", "run-1")["state"] == "loading", "killed before the load completed"

    result = load_shards(redis_client, url, "p_load", "run-1", 16)  # the retry, on another worker
    assert not result.reused and result.members == users
    assert read_layout(redis_client, "p_load", "run-1")["state"] == "complete"
    loaded = [u for s in range(1, 17) for u in read_page(redis_client, ShardKeys("p_load", "run-1", s), 0, users)]
    assert len(loaded) == users and set(loaded) == set(uids)
    assert load_shards(redis_client, url, "p_load", "run-1", 16).reused  # same object again: nothing rewritten


def test_missing_staging_at_load_fails_without_retries(moto_s3: MotoS3Server, s3_url: str, tmp_path: Path) -> None:
    """Missing state is an error, and retrying the load cannot bring the staging file back."""
    from airflow.sdk.exceptions import AirflowFailException
    from c2b.airflow.dag_factory import run_step

    plan = _plan_dags(tmp_path)._c2b_plan
    url = f"s3://{CONN}@{BUCKET}/{s3_url}/staging/{PLAN}/manual__gone.parquet"
    with pytest.raises(AirflowFailException, match=f"reading {url}: not found.*Clear the whole run"):
        run_step("load_shards", plan, {"run_id": "manual__gone"}, {"extract": {"path": url, "counts": {"kept": 1}}},
                 None)
