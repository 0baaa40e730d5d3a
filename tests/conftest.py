"""Shared fixtures: a real redis-server, a real DuckDB demo warehouse, Airflow pointed at both."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its config at import: point it at the project before anything imports it.
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

# Under pytest-xdist (scripts/dev.sh test runs two test processes), each process gets its own copy
# of the migrated Airflow metadata DB: the dag.test() runs and `c2b demo` subprocesses of the two
# would otherwise write one SQLite file at once. Subprocesses inherit the variable.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in os.environ:
    import shutil

    _shared_db = Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"
    if _shared_db.exists():
        _own_db = _shared_db.with_name(f"airflow-{_WORKER}.db")
        shutil.copyfile(_shared_db, _own_db)
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_own_db}"

# Import Airflow now, while pytest's session-long capture is sys.stderr: its logging handlers bind
# to the stream of the moment, and when a test's ``capsys`` was that stream (Airflow first imported
# inside such a test), every later log line met a closed stream ("--- Logging error ---").
import airflow  # noqa: E402,F401

from devtools.servers import MotoS3Server, RedisServer  # noqa: E402 (after the Airflow env above)

DEMO_USERS = 20_000

# Modules that start a whole Airflow stack (devtools/airflow_stack.py). Under pytest-xdist one test
# process runs them all, one after another, while the other takes the rest of the suite file by
# file: two stacks at once on 2 cores would starve each other's scheduler past the tests' waits.
# (xdist's own ``--dist loadgroup`` cannot say this on pytest 9: it renames the items' ``_nodeid``,
# which pytest 9 no longer reads, so its groups are silently ignored.)
LIVE_STACKS = "live Airflow stacks"


@cache
def starts_a_stack(module: Path) -> bool:
    return "AirflowStack(" in module.read_text(encoding="utf-8")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Send each test module to one test process as a whole, and every live-stack module to the same one."""
    from xdist.scheduler import LoadScopeScheduling

    class LiveStacksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return LIVE_STACKS if starts_a_stack(Path(config.rootpath) / module) else module

    return LiveStacksTogether(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _WORKER:  # the longest unit of work first (dev.sh passes --no-loadscope-reorder): it sets the pace
        items.sort(key=lambda item: not starts_a_stack(item.path))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_s3(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """A real S3 API on loopback (moto in server mode) with the bucket named by the module's ``BUCKET``."""
    server = MotoS3Server(tmp_path_factory.mktemp("moto")).start()
    server.client().create_bucket(Bucket=request.module.BUCKET)
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer):  # -> redis.Redis
    """A client of the session's redis-server, emptied before each test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DuckDB demo warehouse (20k users, fixed seed)."""
    from devtools.demo_warehouse import build_demo_warehouse

    path = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    build_demo_warehouse(path, users=DEMO_USERS, seed=42)
    return path


@pytest.fixture
def c2b_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer,
            demo_warehouse: Path, redis_client) -> Path:
    """Point the engine's Airflow connections and data folder at this test's real servers."""
    monkeypatch.setenv("AIRFLOW_CONN_C2B_REDIS", f"{redis_server.url}/?db=0")
    monkeypatch.setenv("AIRFLOW_CONN_C2B_WAREHOUSE", f'{{"conn_type": "duckdb", "host": "{demo_warehouse}"}}')
    monkeypatch.setenv("C2B_REDIS_URL", redis_server.url)
    monkeypatch.setenv("C2B_DATA_DIR", str(tmp_path / "c2b"))
    return tmp_path / "c2b"
