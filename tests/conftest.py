"""Shared fixtures: a real PostgreSQL primary + hot standby, and the proxy as a subprocess."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# deploy/local is a directory of scripts, not a package; make pgcluster importable.
sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))

import pgcluster  # noqa: E402
from pgcluster import PgCluster, free_port  # noqa: E402,F401  (free_port is re-exported for tests)
from proxyproc import ProxyProcess, ProxyStartError, launch_proxy  # noqa: E402


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Primary + one streaming replica for the whole session (env DSNs, testcontainers or local binaries)."""
    cluster = pgcluster.acquire_cluster(replicas=1)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def proxy_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """start(mode="EVENTUAL", extra_args=(), cluster=None) -> ProxyProcess; every proxy is killed at teardown.

    `cluster` defaults to the session `pg_cluster`, requested lazily so tests that pass their
    own cluster do not start one.
    """
    started: list[ProxyProcess] = []

    def start(mode: str = "EVENTUAL", extra_args: Sequence[str] = (), cluster: PgCluster | None = None) -> ProxyProcess:
        __tracebackhide__ = True  # the failure message carries the log tail; the frame adds nothing
        try:
            proxy = launch_proxy(cluster or request.getfixturevalue("pg_cluster"), mode, extra_args, tmp_path)
        except ProxyStartError as exc:
            pytest.fail(str(exc))
        started.append(proxy)
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
