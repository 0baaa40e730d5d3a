"""Real servers the tests start and stop themselves: a private redis-server per test session."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A real ``redis-server`` on a loopback port, which a test may stop and restart."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        """``appendonly=True`` keeps data across :meth:`restart` (AOF, fsync always), as a
        production store would."""
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (make test installs Debian's redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer; see {self.workdir}/redis.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()


def free_cluster_port(taken: Collection[int] = ()) -> int:
    """Return a loopback port ``p`` with ``p + 10000`` (its cluster bus) free too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 40000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair (p, p+10000) on loopback")


class RedisClusterServers:
    """A real 3-primary Redis Cluster on loopback, built with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        if not shutil.which("redis-server") or not shutil.which("redis-cli"):
            raise RuntimeError("redis-server / redis-cli are not installed")
        self.workdir = workdir
        self.ports: list[int] = []
        for _ in range(nodes):
            self.ports.append(free_cluster_port(set(self.ports)))
        self.procs: list[subprocess.Popen] = []

    @property
    def startup_nodes(self) -> str:
        """The RedisHook ``startup_nodes`` extra: ``host:port,host:port``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def airflow_conn(self) -> str:
        """An ``AIRFLOW_CONN_*`` value for the RedisHook's cluster mode."""
        import json

        return json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": self.ports[0],
                           "extra": {"cluster": True, "startup_nodes": ",".join(
                               f"127.0.0.1:{p}" for p in self.ports[1:])}})

    def client(self):  # -> redis.cluster.RedisCluster
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in self.ports])

    def start(self) -> RedisClusterServers:
        for port in self.ports:
            d = self.workdir / str(port)
            d.mkdir(parents=True, exist_ok=True)
            self.procs.append(subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def ready() -> bool:
            for p in self.ports:
                info = redis.Redis(port=p).cluster("info")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.ports):
                    return False
            return True

        try:
            for port in self.ports:
                self._wait(lambda p=port: redis.Redis(port=p).ping(), f"redis-server on port {port} did not answer")
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60)
            self._wait(ready, "the cluster did not reach cluster_state:ok", timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _wait(check, message: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        raise RuntimeError(message)

    def flush(self) -> None:
        for p in self.ports:
            redis.Redis(port=p).flushall()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


class ReplyCuttingProxy:
    """A TCP proxy in front of a real Redis that can lose the reply to one chosen request.

    It forwards everything both ways; once armed with :meth:`cut_reply_to`, the first request
    containing the marker reaches Redis (which runs it), and the connection is closed instead of
    passing Redis's answer back. That is what a client sees when Redis goes down right after
    running a command (a SIGTERM shutdown persists the write but never sends the reply): it does
    not know whether its command ran.
    """

    def __init__(self, upstream_port: int) -> None:
        import threading

        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._marker: bytes | None = None
        self._skip = 0
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def cut_reply_to(self, marker: bytes, skip: int = 0) -> None:
        """Lose the reply to the ``skip + 1``-th request from now that contains ``marker``."""
        with self._lock:
            self._marker, self._skip = marker, skip

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            doomed = threading.Event()
            threading.Thread(target=self._requests, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, client, doomed), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket, doomed) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._marker is not None and self._marker in data:
                        if self._skip == 0:
                            self._marker = None
                            doomed.set()
                        else:
                            self._skip -= 1
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _replies(self, upstream: socket.socket, client: socket.socket, doomed) -> None:
        try:
            while data := upstream.recv(65536):
                if doomed.is_set():  # the doomed request ran; its answer never reaches the client
                    with self._lock:
                        self.cuts += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class MotoS3Server:
    """A real S3 API on a loopback port: ``moto`` in server mode (``moto[server]``, a test tool),
    in its own process, which a test starts and stops."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def airflow_conn(self) -> str:
        """The JSON of an Airflow ``aws`` connection to this server (what ``AIRFLOW_CONN_<ID>`` holds)."""
        import json

        return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                           "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}})

    def client(self):  # -> a boto3 S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def start(self, timeout: float = 60) -> MotoS3Server:
        import sys

        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"moto-{self.port}.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto server did not listen on {self.port} within {timeout:.0f} s; see {log.name}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
