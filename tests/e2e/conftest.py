"""e2e fixtures: long-lived proxies, direct connections to each server, and where-did-it-run helpers.

Which server ran a statement is read from the servers themselves: `pg_is_in_recovery()` and
`inet_server_port()` evaluated by the statement (or its transaction) say primary or replica.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Iterator

import psycopg
import pytest
from proxyproc import LOG_TAIL_CHARS, ProxyProcess, launch_proxy

REPLICA_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------- proxies


@pytest.fixture(scope="session")
def _shared_proxies(pg_cluster, tmp_path_factory) -> Iterator[dict]:
    """One proxy per mode for the whole e2e session (starting one per test is too slow)."""
    proxies: dict[str, ProxyProcess] = {}
    log_dir = tmp_path_factory.mktemp("e2e-proxy-logs")

    def get(mode: str) -> ProxyProcess:
        proxy = proxies.get(mode)
        if proxy is None or not proxy.alive():
            proxy = proxies[mode] = launch_proxy(pg_cluster, mode, log_dir=log_dir, service="e2e")
        return proxy

    holder = {"get": get}
    yield holder  # type: ignore[misc]
    for proxy in proxies.values():
        proxy.stop()


def _use_shared(request: pytest.FixtureRequest, shared: dict, mode: str) -> ProxyProcess:
    proxy = shared["get"](mode)
    # Remember where this test's share of the log starts, for the failure report.
    request.node._e2e_proxies = getattr(request.node, "_e2e_proxies", []) + [(proxy, len(proxy.log_text()))]
    return proxy


@pytest.fixture
def eventual_proxy(request, _shared_proxies) -> Iterator[ProxyProcess]:
    """The session's EVENTUAL proxy; the test fails (with the log) if the proxy died during it."""
    proxy = _use_shared(request, _shared_proxies, "EVENTUAL")
    yield proxy
    assert proxy.alive(), f"proxy exited with {proxy.process.returncode}; log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}"


@pytest.fixture
def strong_proxy(request, _shared_proxies) -> Iterator[ProxyProcess]:
    proxy = _use_shared(request, _shared_proxies, "STRONG")
    yield proxy
    assert proxy.alive(), f"proxy exited with {proxy.process.returncode}; log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}"


@pytest.fixture
def start_proxy(request, proxy_factory):
    """proxy_factory, with the started proxies' logs attached to this test's failure report."""

    def start(*args: Any, **kwargs: Any):
        proxy = proxy_factory(*args, **kwargs)
        request.node._e2e_proxies = getattr(request.node, "_e2e_proxies", []) + [(proxy, 0)]
        return proxy

    return start


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for proxy, offset in getattr(item, "_e2e_proxies", []):
            text = proxy.log_text()[offset:]
            if len(text) > LOG_TAIL_CHARS:
                text = "...\n" + text[-LOG_TAIL_CHARS:]
            report.sections.append((f"proxy log :{proxy.port} (this test)", text or "(empty)"))
    return report


# --------------------------------------------------------------------------- direct connections


class Direct:
    """Autocommit psycopg connections straight to the primary and the first replica."""

    def __init__(self, cluster: Any):
        self.cluster = cluster
        self.primary_server = cluster.primary
        self.replica_server = cluster.replicas[0]
        self.primary = psycopg.connect(cluster.primary.dsn, autocommit=True, connect_timeout=10)
        self.replica = psycopg.connect(cluster.replicas[0].dsn, autocommit=True, connect_timeout=10)

    def close(self) -> None:
        self.primary.close()
        self.replica.close()

    # -- where did it run

    def where(self, in_recovery: Any, port: Any) -> str:
        """'primary' or 'replica' from (pg_is_in_recovery(), inet_server_port()); anything else fails."""
        in_recovery = {"t": True, "f": False}.get(in_recovery, in_recovery) if isinstance(in_recovery, str) else in_recovery
        port = int(port)
        if in_recovery is False and port == self.primary_server.port:
            return "primary"
        if in_recovery is True and port == self.replica_server.port:
            return "replica"
        raise AssertionError(f"(pg_is_in_recovery, inet_server_port) = ({in_recovery!r}, {port}) matches neither "
                             f"the primary (False, {self.primary_server.port}) nor the replica "
                             f"(True, {self.replica_server.port})")

    # -- queries

    def primary_all(self, sql: str, params: Any = None) -> list[tuple]:
        return self.primary.execute(sql, params).fetchall()

    def primary_one(self, sql: str, params: Any = None) -> Any:
        return self.primary.execute(sql, params).fetchone()[0]

    def replica_all(self, sql: str, params: Any = None) -> list[tuple]:
        return self.replica.execute(sql, params).fetchall()

    def replica_one(self, sql: str, params: Any = None) -> Any:
        return self.replica.execute(sql, params).fetchone()[0]

    def wait_replica(self, timeout: float = REPLICA_TIMEOUT_S) -> None:
        """Block until the replica has replayed everything the primary has written so far.

        The insert position, not pg_current_wal_lsn(): with synchronous_commit=off (the throwaway
        cluster's setting) a commit record can still sit in the WAL buffers past the write position.
        """
        lsn = self.primary_one("SELECT pg_current_wal_insert_lsn()::text")
        deadline = time.monotonic() + timeout
        while True:
            if self.replica_one("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replica did not replay up to {lsn} within {timeout}s")
            time.sleep(0.02)

    def wait_replica_sees(self, sql: str, params: Any = None, timeout: float = REPLICA_TIMEOUT_S) -> Any:
        """Poll `sql` on the replica until it returns a truthy first value (missing tables count as 'not yet')."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.replica_one(sql, params)
                if last:
                    return last
            except psycopg.errors.UndefinedTable as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"replica did not see {sql!r} within {timeout}s (last: {last!r})")
            time.sleep(0.02)

    def create_table(self, ddl_body: str, prefix: str = "e2e") -> str:
        """CREATE TABLE <unique name> (<ddl_body>) on the primary, wait until the replica has it."""
        name = unique_name(prefix)
        self.primary.execute(f"CREATE TABLE {name} ({ddl_body})")
        self.wait_replica()
        return name


def unique_name(prefix: str = "e2e") -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def direct(pg_cluster) -> Iterator[Direct]:
    assert pg_cluster.replicas, "the e2e tests need at least one replica"
    d = Direct(pg_cluster)
    yield d
    d.close()


@pytest.fixture
def table_factory(direct) -> Iterator[Any]:
    """create(ddl_body, prefix) -> unique table name on the primary, visible on the replica; dropped after."""
    created: list[str] = []

    def create(ddl_body: str = "id int PRIMARY KEY, v text", prefix: str = "e2e") -> str:
        name = direct.create_table(ddl_body, prefix)
        created.append(name)
        return name

    yield create
    for name in created:
        try:
            direct.primary.execute(f"DROP TABLE IF EXISTS {name}")
        except psycopg.Error:
            pass
