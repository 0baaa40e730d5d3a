"""docker-compose.yaml runs what the live Celery tests run (devtools/airflow_stack.py), and starts.

There is no Docker engine here: Debian's ``docker-compose`` (v1) validates the file without one,
and the rest is checked on the parsed YAML against the one definition of the stack.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.airflow_stack import CELERY, CHANNEL_CONNECTIONS, COMPONENTS, ENGINE_SETTINGS, celery_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def _service(component: str) -> str:
    return "airflow-" + re.sub(r"-\d+$", "", component)  # worker-1, worker-2 -> airflow-worker (scaled)


def test_compose_runs_the_components_of_the_tested_celery_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    airflow_services = {n for n, s in services.items() if s.get("command", [None])[0] == "airflow"}
    assert airflow_services == {_service(c.name) for c in COMPONENTS[CELERY]}
    for c in COMPONENTS[CELERY]:
        assert services[_service(c.name)]["command"] == ["airflow", *c.args], c.name


def test_compose_sets_the_settings_of_the_tested_celery_stack(compose: dict[str, Any]) -> None:
    env = compose["x-airflow"]["environment"]
    secret = env["AIRFLOW__API_AUTH__JWT_SECRET"]
    want = celery_settings(sql_alchemy_conn=env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
                           broker_url=env["AIRFLOW__CELERY__BROKER_URL"], api_url="http://airflow-api-server:8080",
                           secret=secret, worker_concurrency=int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]))
    assert {k: env.get(k) for k in want} == want
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # The broker is not the audience store.
    assert env["AIRFLOW__CELERY__BROKER_URL"].split("/")[2] != env["AIRFLOW_CONN_C2B_REDIS"].split("/")[2]
    # The engine's connections and data folder: in the environment or in the env file every Airflow
    # container reads; the channel connections are valid Airflow connections.
    connections = {}
    for name in compose["x-airflow"]["env_file"]:
        connections.update(_env_file(ROOT / name))
    assert set(CHANNEL_CONNECTIONS) <= set(connections)
    assert all(json.loads(connections[k])["conn_type"] == "http" for k in CHANNEL_CONNECTIONS)
    assert set(ENGINE_SETTINGS) <= set(env) | set(connections)


def test_compose_fixes_the_blockers_of_a_first_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    airflow = [n for n, s in services.items() if n.startswith("airflow-") and n != "airflow-volumes"]
    # The Airflow containers run as AIRFLOW_UID, and a root one-shot hands them the named volumes first.
    assert all(services[n]["user"] == "${AIRFLOW_UID:-50000}:0" for n in airflow)
    volumes = services["airflow-volumes"]
    assert volumes["user"] == "0:0" and "chown" in " ".join(volumes["entrypoint"])
    assert services["airflow-init"]["depends_on"]["airflow-volumes"] == {"condition": "service_completed_successfully"}
    # The audience store (the ledger lives there) persists: AOF on a volume.
    store = services["audience-store"]
    assert store["command"][store["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in store["volumes"])
    # The build context leaves out local state and test tools; the image installs the repo, runtime pins only.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".airflow", ".git", "bench", "tests"} <= set(ignored)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements-dev.txt /opt/c2b/" in dockerfile and "-r /tmp/req-extra.txt" in dockerfile
    assert "pip install --no-cache-dir --no-deps /opt/c2b" in dockerfile
    assert not {"pytest", "hypothesis", "ruff", "mypy"} & {
        line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text().splitlines()}


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose (Debian's v1) is not installed")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
