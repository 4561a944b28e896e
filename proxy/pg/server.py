"""The PostgreSQL proxy process: listener, shared state, replica monitor, cancels."""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets

from clidash.config import ProxyConfig
from clidash.policy import ModeSpec
from clidash.proxy.dsn import parse_dsn
from clidash.proxy.http import ProxyHttp
from clidash.proxy.policy_watcher import PolicyWatcher
from clidash.proxy.replicas import ReplicaMonitor
from clidash.proxy.routing import PRIMARY, ReplicaView
from clidash.proxy.stats import StatementStats
from clidash.proxy.telemetry import TelemetryExporter
from clidash.proxy.udp import UdpListener

from .auth import Credentials
from .backend import send_cancel
from .classify import Classifier
from .client import ClientSession
from .health import PgReadiness
from .audit import StaleAuditor
from .lag import PgLagMonitor
from .startup import AuthConfig

log = logging.getLogger("clidash.proxy.pg")

MAX_WATCHED_SERVICES = 64


class PgProxy:
    def __init__(self, config: ProxyConfig):
        self.config = config
        self.primary = parse_dsn(config.primary, "primary", "primary")
        self.replica_addresses = [parse_dsn(dsn, f"replica-{i + 1}", "replica")
                                  for i, dsn in enumerate(config.replicas)]
        self.replicas = [ReplicaView(a.name) for a in self.replica_addresses]
        self.policy = config.mode
        self.classifier = Classifier(config.writing_functions)
        self.stats = StatementStats()
        users = config.users or {self.primary.user: self.primary.password or ""}
        self.auth = AuthConfig(config.auth_method,
                               {u: Credentials.from_password(u, pw) for u, pw in users.items()},
                               config.auth_trust_loopback)
        self.monitor = ReplicaMonitor(self.replicas, self._probe_replica, config.health_interval_s)
        # Lag in ms/bytes and read-your-writes tokens; without replicas there is nothing to measure.
        self.lag = PgLagMonitor(self.primary, self.replica_addresses, self.replicas) if self.replicas else None
        self.clients: set[ClientSession] = set()
        self._sessions_by_key: dict[int, ClientSession] = {}
        self._probe_connections: dict[int, object] = {}
        self._server: asyncio.AbstractServer | None = None
        self.watchers: dict[str, PolicyWatcher] = {}
        self._tasks: list[asyncio.Task] = []
        # Metrics and health HTTP (proxy/http.py); None with --no-metrics.
        self.started = False
        self.readiness = PgReadiness(self)
        self.http = None
        # Telemetry windows to Redis (only with redis_url) and UDP app events; None when off.
        self.telemetry: TelemetryExporter | None = None
        self.auditor = StaleAuditor(self, config.audit_rate)
        self.udp: UdpListener | None = None

    async def start(self) -> None:
        """The metrics and health listener first (so /startup answers during
        startup, and a taken port fails before anything else starts), then the proxy."""
        if self.config.metrics_listen is not None:
            host, port = self.config.metrics_address
            http = ProxyHttp(self, host, port, self.readiness.check)
            await http.start()   # ListenError naming the port if it is taken
            self.http = http
        try:
            await self._start_proxy()
        except BaseException:
            await self.close()
            raise
        self.started = True

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def _start_proxy(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ClientSession(self), self.config.listen_host, self.config.listen_port,
            reuse_address=True, backlog=1024)
        if self.config.udp_listen is not None:
            host, port = self.config.udp_address
            udp = UdpListener(host, port)
            await udp.start()
            self.udp = udp
        if self.config.redis_url is not None:
            await self._watch(self.config.service).start()
            self.telemetry = TelemetryExporter(
                self, self.config.redis_url,
                f"{self.config.service}@{self.config.listen_host}:{self.config.listen_port}/{os.getpid()}",
                window_s=self.config.telemetry_window_s)
            self.telemetry.start()
        if self.replicas:
            self._tasks.append(loop.create_task(self.monitor.run()))
            await self.lag.start()
            self.auditor.start()

    @property
    def sockets(self):
        return self._server.sockets if self._server else []

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await self._server.serve_forever()
        finally:
            await self.close()

    async def close(self) -> None:
        self.started = False
        if self.http is not None:
            await self.http.close()
            self.http = None
        self.readiness.close()
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()
        for client in list(self.clients):
            client.close()
        for conn in self._probe_connections.values():
            conn.terminate()
        if self.lag is not None:
            await self.lag.close()
        for watcher in self.watchers.values():
            await watcher.close()
        if self.telemetry is not None:
            await self.telemetry.close()
        if self.udp is not None:
            self.udp.close()
        await self.auditor.close()

    def policy_for(self, service: str, route: str) -> ModeSpec:
        """The consistency mode for a service's route: from Redis when configured
        (floors applied, fail-static), else the --mode flag."""
        watcher = self.watchers.get(service)
        if watcher is None:
            if self.config.redis_url is None:
                return self.policy
            watcher = self._watch(service)
            if watcher.service == service:
                asyncio.get_running_loop().create_task(watcher.start())
        return watcher.mode_for(route)

    def _watch(self, service: str):
        if len(self.watchers) >= MAX_WATCHED_SERVICES:
            # Untrusted application names must not open unbounded Redis work.
            return self.watchers[self.config.service]
        watcher = PolicyWatcher(self.config.redis_url, service, self.policy,
                                f"{service}@{self.config.listen_host}:{self.config.listen_port}/{os.getpid()}",
                                fail_static_ttl_s=self.config.policy_ttl_s)
        self.watchers[service] = watcher
        return watcher

    # -- used by client sessions ------------------------------------------

    def client_opened(self, session: ClientSession) -> None:
        self.clients.add(session)

    def client_closed(self, session: ClientSession) -> None:
        self.clients.discard(session)
        if self._sessions_by_key.get(session.key[0]) is session:
            del self._sessions_by_key[session.key[0]]

    def register_cancel_key(self, session: ClientSession) -> tuple[int, bytes]:
        while True:
            process_id = secrets.randbits(31)
            if process_id and process_id not in self._sessions_by_key:
                break
        self._sessions_by_key[process_id] = session
        return process_id, secrets.token_bytes(4)

    def forward_cancel(self, process_id: int, secret_key: bytes) -> None:
        session = self._sessions_by_key.get(process_id)
        if session is None or not hmac.compare_digest(session.key[1], secret_key):
            return  # like PostgreSQL: an unknown key is ignored silently
        if not session.inflight:
            return
        backend = session.inflight[0].backend
        task = asyncio.get_running_loop().create_task(
            send_cancel(backend.address, backend.process_id, backend.secret_key))
        task.add_done_callback(_log_cancel_failure)

    def mark_replica_down(self, index: int, reason: str) -> None:
        self.monitor.mark_down(index, reason)

    # -- replica health -----------------------------------------------------

    async def _probe_replica(self, index: int) -> None:
        import asyncpg
        conn = self._probe_connections.get(index)
        if conn is None or conn.is_closed():
            addr = self.replica_addresses[index]
            conn = await asyncpg.connect(host=addr.host, port=addr.port, user=addr.user,
                                         password=addr.password, database=addr.dbname or addr.user,
                                         timeout=self.monitor.timeout_s, statement_cache_size=0)
            self._probe_connections[index] = conn
        try:
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        except BaseException:
            self._probe_connections.pop(index, None)
            conn.terminate()
            raise
        if not in_recovery:
            raise RuntimeError("server is not in recovery (promoted?): not used as a replica")


def _log_cancel_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("forwarding a cancel request failed: %s", task.exception())
