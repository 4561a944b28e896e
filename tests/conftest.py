"""Shared fixtures: a real PostgreSQL primary + hot standby, and the proxy as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import quote

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# deploy/local is a directory of scripts, not a package; make pgcluster importable.
sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))

import pgcluster  # noqa: E402
from pgcluster import PgCluster, free_port  # noqa: E402,F401  (free_port is re-exported for tests)

PROXY_START_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Primary + one streaming replica for the whole session (env DSNs, testcontainers or local binaries)."""
    cluster = pgcluster.acquire_cluster(replicas=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class ProxyProcess:
    process: subprocess.Popen
    host: str
    port: int
    log_path: Path
    cluster: PgCluster
    _log_file: object = field(default=None, repr=False)

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        primary = self.cluster.primary
        user = primary.user if user is None else user
        password = primary.password if password is None else password
        dbname = primary.dbname if dbname is None else dbname
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait_until_listening(proxy: ProxyProcess, timeout: float) -> None:
    __tracebackhide__ = True  # the failure message carries the log tail; the frame adds nothing
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            proxy.stop()
            pytest.fail(f"proxy exited with code {proxy.process.returncode} before listening; "
                        f"log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}")
        if _accepts_tcp(proxy.host, proxy.port):
            return
        time.sleep(0.05)
    proxy.stop()
    pytest.fail(f"proxy did not accept TCP on {proxy.host}:{proxy.port} within {timeout:.0f}s; "
                f"log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}")


@pytest.fixture
def proxy_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """start(mode="EVENTUAL", extra_args=(), cluster=None) -> ProxyProcess; every proxy is killed at teardown.

    `cluster` defaults to the session `pg_cluster`, requested lazily so tests that pass their
    own cluster do not start one.
    """
    started: list[ProxyProcess] = []

    def start(mode: str = "EVENTUAL", extra_args: Sequence[str] = (), cluster: PgCluster | None = None) -> ProxyProcess:
        cluster = cluster or request.getfixturevalue("pg_cluster")
        host, port = "127.0.0.1", free_port()
        cmd = [sys.executable, "-m", "clidash", "proxy", "--protocol", "postgresql",
               "--listen", f"{host}:{port}", "--primary", cluster.primary.dsn]
        for replica in cluster.replicas:
            cmd += ["--replica", replica.dsn]
        cmd += ["--service", "test", "--mode", mode, *extra_args]
        log_path = tmp_path / f"proxy-{port}.log"
        log_file = open(log_path, "wb")
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        proxy = ProxyProcess(process, host, port, log_path, cluster, log_file)
        started.append(proxy)
        _wait_until_listening(proxy, PROXY_START_TIMEOUT_S)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


# --------------------------------------------------------------------------- Redis (policy plane)

import redisserver  # noqa: E402  (deploy/local is on sys.path, see above)
from redisserver import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One Redis for the whole session (CLIDASH_TEST_REDIS_URL, testcontainers or local redis-server)."""
    server = redisserver.acquire_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session Redis, emptied (FLUSHALL) before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
