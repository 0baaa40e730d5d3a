"""One definition of the live Airflow set-ups: which processes run, with which settings.

- ``LocalExecutor``: api-server, scheduler, dag-processor on the SQLite DB (the live LocalExecutor
  tests, with auth on (:func:`simple_auth_settings`) and in multi-team mode
  (:func:`c2b.plan.lines.multi_team_env`, :func:`team_bundles_settings`) where they need it;
  ``make demo``/``make ui`` keep their own defaults).
- ``CeleryExecutor``: api-server, scheduler, dag-processor, triggerer and two ``airflow celery worker``
  processes with distinct hostnames, the metadata DB on PostgreSQL, Redis as the Celery broker.

``make cluster`` (``python -m devtools.airflow_stack start``) and the live Celery tests start the
same :class:`AirflowStack`, and ``tests/dag/test_compose_file.py`` checks that docker-compose.yaml
runs the same components with the same settings (:data:`COMPONENTS`, :func:`celery_settings`), so
the deployment file cannot drift from what the tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
LOCAL, CELERY = "LocalExecutor", "CeleryExecutor"
CHANNEL_CONNECTIONS = ("AIRFLOW_CONN_C2B_PUSH", "AIRFLOW_CONN_C2B_SMS", "AIRFLOW_CONN_C2B_CALL",
                       "AIRFLOW_CONN_C2B_PRIVATE_DOMAIN", "AIRFLOW_CONN_C2B_WEBHOOK")
# What every deployment sets for the engine (values are per deployment): the audience store, the
# warehouse, the channels, the engine's local folder and the storage of run artifacts (C2B_DATA_URL:
# file:// of a folder every worker mounts, or s3://<conn_id>@<bucket>/<prefix>; see c2b.storage).
ENGINE_SETTINGS = ("AIRFLOW_CONN_C2B_REDIS", "AIRFLOW_CONN_C2B_WAREHOUSE", *CHANNEL_CONNECTIONS, "C2B_DATA_DIR",
                   "C2B_DATA_URL")


@dataclass(frozen=True)
class Component:
    """One Airflow process: ``airflow <args>``; ``local_args`` are added only when several of it
    share one machine (a docker-compose service runs one per container)."""

    name: str
    args: tuple[str, ...]
    local_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


# Celery workers of one machine get distinct names (a compose container has its own hostname), and
# report them as the task instance's hostname through ``[core] hostname_callable`` (below).
COMPONENTS: dict[str, tuple[Component, ...]] = {
    LOCAL: (Component("api-server", ("api-server",), ("--workers", "1")),
            Component("dag-processor", ("dag-processor",)),
            Component("scheduler", ("scheduler",))),
    CELERY: (Component("api-server", ("api-server",), ("--workers", "1")),
             Component("dag-processor", ("dag-processor",)),
             Component("scheduler", ("scheduler",)),
             Component("triggerer", ("triggerer",)),
             *(Component(f"worker-{i}", ("celery", "worker"),
                         ("--celery-hostname", f"worker-{i}@%h", "--skip-serve-logs"),
                         {"C2B_WORKER_HOSTNAME": f"worker-{i}",
                          "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devtools.airflow_stack.worker_hostname"})
               for i in (1, 2))),
}


def worker_hostname() -> str:
    """The task instance's hostname: the worker's name when several share a machine, else the FQDN."""
    return os.environ.get("C2B_WORKER_HOSTNAME") or socket.getfqdn()


def celery_settings(*, sql_alchemy_conn: str, broker_url: str, api_url: str, secret: str,
                    worker_concurrency: int = 8) -> dict[str, str]:
    """The Airflow settings of a CeleryExecutor deployment (the same keys in docker-compose.yaml).

    ``secret`` signs the task tokens and log requests: every machine of a deployment needs the same.
    """
    return {
        "AIRFLOW__CORE__EXECUTOR": CELERY,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sql_alchemy_conn.replace("+psycopg2", ""),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__API__SECRET_KEY": secret,
    }


# A killed worker's task instance is retried once the scheduler sees its heartbeat stop: 300 s by
# default. The tests (and `make cluster`, a playground) detect it within ~20 s. A task a dead worker
# had taken from the broker but not started stays queued until task_queued_timeout (600 s by default;
# it also covers the wait for a free worker slot, so keep it well above a wave of tasks).
FAST_FAILURE_DETECTION = {
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "180",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
}
# New and changed plan files show within seconds (the defaults are minutes). The index is parsed
# again every 5 s: at 2 s the dag-processors of the test stacks were the largest CPU user of CI
# after the test processes (the plan files are read through the index, so a changed plan shows at
# the index's next parse, not at its own mtime).
FAST_PARSING = {
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(*, home: Path, dags: Path, port: int, executor: str) -> dict[str, str]:
    """Settings every live set-up needs on one machine: its home, folders, API port, free log ports,
    and its own metadata DB (SQLite in its home; a CeleryExecutor set-up names its PostgreSQL one on
    top). Named, not inherited: a test process under pytest-xdist points Airflow at its own copy of
    the project's DB (tests/conftest.py), which a stack must not share."""
    return {
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{Path(home).absolute() / 'airflow.db'}",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }


def simple_auth_settings(users: Mapping[str, tuple[str, Sequence[str]]],
                         passwords_file: Path | None = None) -> dict[str, str]:
    """Auth on, with the Simple auth manager's users: ``{name: (role, teams)}``.

    Without ``passwords_file`` Airflow generates the passwords into
    ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` (:meth:`AirflowStack.login` reads it).
    """
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
               f"{name}:{role}" + (f":{'|'.join(teams)}" if teams else "") for name, (role, teams) in users.items())}
    if passwords_file is not None:
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords_file)
    return env


def team_bundles_settings(bundles: Mapping[str, tuple[str, Path]]) -> dict[str, str]:
    """Multi-team mode with ``{bundle name: (team, folder)}`` on the default executor.

    The business lines' own set-up (a bundle and an executor per line) is
    :func:`c2b.plan.lines.multi_team_env`; this one is for test layouts whose bundles are not lines.
    The teams are made from the bundle config by ``airflow teams sync`` (:meth:`AirflowStack.start`'s
    ``setup``).
    """
    return {"AIRFLOW__CORE__MULTI_TEAM": "True",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
                {"name": name, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                 "kwargs": {"path": str(folder), "refresh_interval": 0}, "team_name": team}
                for name, (team, folder) in bundles.items()])}


ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def ensure_postgres_database(name: str, admin_dsn: str = ADMIN_DSN, fresh: bool = False) -> None:
    """Create the PostgreSQL database ``name`` if missing (dropped first when ``fresh``)."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            if fresh:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def drop_postgres_database(name: str, admin_dsn: str = ADMIN_DSN) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


class AirflowStack:
    """The Airflow processes of one executor, started detached (each leads its own process group, so
    a kill reaches the task processes it forked), logs and pids under ``state``."""

    def __init__(self, state: Path, env: Mapping[str, str], executor: str = LOCAL, *,
                 inherit_airflow_env: bool = True) -> None:
        """``env`` on top of this process's environment; without ``inherit_airflow_env`` the
        ``AIRFLOW__*`` settings and ``AIRFLOW_CONN_*`` connections of this process are dropped first
        (a test's stack then has only the settings and connections it names)."""
        self.state, self.executor = state, executor
        inherited = {k: v for k, v in os.environ.items()
                     if inherit_airflow_env or not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        self.env = {**inherited, **env}
        self.url = f"http://127.0.0.1:{self.env['AIRFLOW__API__PORT']}"
        self.components = {c.name: c for c in COMPONENTS[executor]}
        self.pids: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.headers: dict[str, str] = {}  # the REST calls' auth (:meth:`login`)

    @property
    def pid_file(self) -> Path:
        return self.state / "pids.json"

    def migrate(self) -> None:
        """Create or upgrade the metadata DB (also writes airflow.cfg once, before the components)."""
        self.state.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([AIRFLOW, "db", "migrate"], env=self.env, cwd=self.state, capture_output=True,
                              text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"`airflow db migrate` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def cli(self, *args: str) -> str:
        """Run ``airflow <args>`` with the stack's settings; return its output (fail with it)."""
        done = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.state, capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            raise RuntimeError(f"`airflow {' '.join(args)}` failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return done.stdout

    def start(self, timeout: float = 180, wait: bool = True,
              setup: Sequence[Sequence[str]] = ()) -> AirflowStack:
        """Migrate the DB, run the ``setup`` CLI commands (teams, pools...), start every component
        and (``wait``) wait until the stack takes runs."""
        self.migrate()
        for args in setup:
            self.cli(*args)
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for c in self.components.values():
                self.start_component(c.name)
            if wait:
                self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_component(self, name: str) -> None:
        c = self.components[name]
        with open(self.state / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([AIRFLOW, *c.args, *c.local_args], env={**self.env, **c.env}, cwd=self.state,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name], self.pids[name] = proc, proc.pid
        self.pid_file.write_text(json.dumps(self.pids))

    def wait_healthy(self, timeout: float) -> None:
        """Wait until the API answers and, with Celery, both workers have joined the broker."""
        import requests

        def healthy() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = self.state / "logs" / f"{name}.log"
                    raise RuntimeError(f"airflow {name} exited with {proc.returncode}; see {log}")
            health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
            return health["scheduler"]["status"] == "healthy" and self.workers_ready()

        wait_for("the Airflow API and scheduler", healthy, timeout)

    def workers_ready(self) -> bool:
        workers = [n for n in self.components if n.startswith("worker-")]
        logs = self.state / "logs"
        return all(b" ready." in (logs / f"{n}.log").read_bytes() for n in workers)

    def kill(self, name: str) -> None:
        """SIGKILL a component and every process it forked (a lost machine, as far as Airflow can tell).

        Not only its process group: Airflow's supervisor puts each task process in a group of its own.
        """
        tree = _tree(self.pids[name])
        for p in tree:
            p.kill()
        for p in tree:
            p.wait(30)

    def stop(self) -> None:
        pids = self.pids or (json.loads(self.pid_file.read_text()) if self.pid_file.exists() else {})
        trees = [p for pid in pids.values() for p in _tree(pid)]
        for pid in pids.values():
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        ours = {proc.pid: proc for proc in self.procs.values()}
        for pid in pids.values():
            # Reap our own children as they exit: a zombie leader keeps its process group "alive"
            # to killpg(0), and the wait ran its whole 30 s at every stop.
            while time.monotonic() < deadline:
                if pid in ours:
                    ours[pid].poll()
                if not _alive(pid):
                    break
                time.sleep(0.2)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in trees:  # task processes left behind (groups of their own)
            if p.is_running():
                p.kill()
        for proc in self.procs.values():
            proc.wait(10)
        self.pid_file.unlink(missing_ok=True)
        self.pids, self.procs = {}, {}

    # --- the REST API -------------------------------------------------------------------------------

    def token(self, user: str, password: str | None = None) -> str:
        """Return a bearer token of ``user`` (password: the generated one unless given)."""
        import requests

        if password is None:
            generated = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
            password = json.loads(generated.read_text())[user]
        r = requests.post(f"{self.url}/auth/token", json={"username": user, "password": password}, timeout=30)
        if r.status_code not in (200, 201):
            raise AssertionError(f"no token for {user}: HTTP {r.status_code} {r.text[:300]}")
        return str(r.json()["access_token"])

    def login(self, user: str, password: str | None = None, timeout: float = 120) -> AirflowStack:
        """Make the REST calls below as ``user`` (waits for the api-server to hand out tokens)."""
        token = wait_for(f"a token for {user}", lambda: _or_none(lambda: self.token(user, password)), timeout)
        self.headers = {"Authorization": f"Bearer {token}"}
        return self

    def get(self, path: str) -> Any:
        import requests

        r = requests.get(f"{self.url}/api/v2/{path}", headers=self.headers, timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        import requests

        r = requests.post(f"{self.url}/api/v2/{path}", json=body, headers=self.headers, timeout=30)
        if not r.ok:
            raise AssertionError(f"POST {path}: HTTP {r.status_code} {r.text[:500]}")
        return r.json()

    def unpause(self, dag_id: str) -> None:
        import requests

        requests.patch(f"{self.url}/api/v2/dags/{dag_id}?update_mask=is_paused", json={"is_paused": False},
                       headers=self.headers, timeout=30).raise_for_status()

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Unpause ``dag_id``, start a manual run and return its run id."""
        self.unpause(dag_id)
        return str(self.post(f"dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"])

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        wait_for(f"DAG {dag_id} to load", lambda: dag_id in {d["dag_id"] for d in self.get("dags?limit=1000")["dags"]},
                 timeout)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait for the run to end; return its state."""
        def ended() -> str | None:
            state = self.get(f"dags/{dag_id}/dagRuns/{run_id}")["state"]
            return state if state in ("success", "failed") else None

        return str(wait_for(f"run {run_id} of {dag_id} to end", ended, timeout))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 180, every: float = 1.0) -> Any:
    """Poll ``check`` until it returns something true; fail with the last answer or error."""
    import requests

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (requests.RequestException, KeyError, IndexError, OSError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def _or_none(call: Callable[[], Any]) -> Any:
    """Return ``call()``, or None when it fails with an AssertionError (not ready yet)."""
    try:
        return call()
    except (AssertionError, ValueError, KeyError):
        return None


def _tree(pid: int) -> list:  # -> list[psutil.Process]
    """The process ``pid`` and all its descendants, the deepest first."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [*reversed(root.children(recursive=True)), root]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


# --- `make cluster` / `make cluster-stop` -------------------------------------------------------------

def cluster_env(state: Path, port: int, database: str, broker_url: str) -> dict[str, str]:
    """The env of `make cluster`: the process env of scripts/lib.sh plus the Celery settings."""
    secret = (state / "secret").read_text() if (state / "secret").exists() else os.urandom(16).hex()
    state.mkdir(parents=True, exist_ok=True)
    (state / "secret").write_text(secret)
    # Run artifacts where `make demo` keeps them (the stack's AIRFLOW_HOME is a folder of its own).
    data = os.environ.get("C2B_DATA_DIR") or str(Path(os.environ.get("AIRFLOW_HOME", ROOT / ".airflow")) / "c2b")
    dags = Path(os.environ.get("AIRFLOW__CORE__DAGS_FOLDER", ROOT / "dags"))
    # Run artifacts under C2B_DATA_DIR unless C2B_DATA_URL (e.g. s3://conn@bucket/prefix) says otherwise.
    url = os.environ.get("C2B_DATA_URL") or f"file://{Path(data).absolute()}"
    return {"C2B_DATA_DIR": data, "C2B_DATA_URL": url, **base_env(home=state, dags=dags, port=port, executor=CELERY),
            **celery_settings(sql_alchemy_conn=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                              broker_url=broker_url, api_url=f"http://127.0.0.1:{port}", secret=secret,
                              worker_concurrency=int(os.environ.get("C2B_WORKER_CONCURRENCY", "8"))),
            **FAST_FAILURE_DETECTION}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start or stop the local CeleryExecutor stack (make cluster).")
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--state", type=Path, default=ROOT / ".airflow" / "cluster")
    parser.add_argument("--port", type=int, default=int(os.environ.get("UI_PORT", "8080")))
    parser.add_argument("--database", default="c2b_airflow", help="PostgreSQL database of the metadata")
    parser.add_argument("--broker-url", default=os.environ.get("C2B_BROKER_URL"),
                        help="Redis URL of the Celery broker (not the audience store's database)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        AirflowStack(args.state, {"AIRFLOW__API__PORT": str(args.port)}, CELERY).stop()
        print(f"stopped the cluster in {args.state}")
        return
    if not args.broker_url:
        parser.error("--broker-url (or C2B_BROKER_URL) is required")
    stack = AirflowStack(args.state, cluster_env(args.state, args.port, args.database, args.broker_url), CELERY)
    if stack.pid_file.exists():
        stack.stop()  # a previous cluster of this state folder: start afresh
    ensure_postgres_database(args.database)
    stack.start()
    workers = ", ".join(n for n in stack.components if n.startswith("worker-"))
    print(f"Airflow UI: {stack.url}  (CeleryExecutor, workers {workers}; logs in {args.state}/logs;"
          " stop with `make cluster-stop`)")


if __name__ == "__main__":
    main()
