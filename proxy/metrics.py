"""Prometheus metrics of one proxy, built at scrape time (DESIGN section 7).

Nothing here runs per query: the hot path only bumps the plain counters of
`stats.StatementStats`; a scrape turns them, the replica views, the policy
watchers and the connection sets into metric families.

A scrape is split in two so that it stalls the proxy as little as possible:
`take_snapshot()` copies the numbers on the event loop thread (no locks
needed: nothing else runs meanwhile; about 1 us per histogram), and
`render()` builds the metric families and the text exposition from that
snapshot, which can run in a worker thread (about 13 us per exposed series
with prometheus_client, i.e. ~15 ms for 1000 series: too long to hold the loop).

Exported (base units, counters end in `_total`):

- `db_client_operation_duration_seconds` histogram
  {db_system_name, service, route, target_role, operation}
- `clidash_proxy_statement_errors_total` {service, route, target_role, operation}:
  statements that ended in an error (not in DESIGN section 7; the per-route
  error count the telemetry record also carries)
- `clidash_proxy_routed_total` {service, route, target_role, reason}
- `clidash_proxy_fallbacks_total` {service, reason}
- `clidash_proxy_replica_lag_seconds` / `_lag_bytes` / `_healthy` {replica}:
  lag series are omitted while a replica's lag is unknown
- `clidash_proxy_policy_version` / `clidash_proxy_policy_age_seconds` {service}:
  without Redis there is no policy plane: version 0 for the configured service
  and no age series (an age of 0 would read as "fresh"). With Redis, the age is
  seconds since Redis last answered, +Inf before it ever has.
- `clidash_proxy_client_connections`, `clidash_proxy_backend_connections` {role}
- `clidash_proxy_errors_total` {kind}, `clidash_proxy_telemetry_dropped_total`,
  `clidash_proxy_route_overflow_total` {service}, `clidash_proxy_hints_ignored_total` {service}
- `clidash_app_operation_duration_seconds` histogram {service, operation}: application
  latency events received over UDP (proxy/udp.py), and
  `clidash_proxy_udp_dropped_total` {reason}: datagrams rejected
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from clidash.proxy.routing import PRIMARY
from clidash.proxy.stats import LATENCY_BUCKETS_S

DURATION = "db_client_operation_duration_seconds"
STATEMENT_LABELS = ("service", "route", "target_role", "operation")

# `le` label values, formatted once the way the Prometheus client libraries do.
_BUCKET_BOUNDS = tuple(floatToGoString(b) for b in LATENCY_BUCKETS_S) + ("+Inf",)


def cumulative_buckets(counts) -> list[tuple[str, int]]:
    """Per-bucket counts (last = +Inf, not cumulative) as Prometheus `le` buckets."""
    total = 0
    buckets = []
    for bound, n in zip(_BUCKET_BOUNDS, counts):
        total += n
        buckets.append((bound, total))
    return buckets


@dataclass(slots=True)
class ProxySnapshot:
    """Plain copies of what the metrics show, taken on the event loop thread."""

    db_system: str
    statements: list       # (service, route, operation, role), counts, sum, errors, reasons
    fallbacks: list        # ((service, reason), n)
    replicas: list         # (name, lag_ms, lag_bytes, healthy)
    policies: list         # (service, version, age_s or None for "no age series")
    client_connections: int
    backend_connections: dict   # role -> n
    errors: list           # (kind, n)
    route_overflow: list   # (service, n)
    hints_ignored: list    # (service, n)
    telemetry_dropped: int = 0
    app_operations: list = ()   # ((service, operation), counts, sum)
    route_modes: list = ()      # (service, route, mode text) for routes that carried statements
    udp_dropped: list = ()      # (reason, n)


def take_snapshot(proxy, telemetry_dropped: int | None = None) -> ProxySnapshot:
    """Copy a running proxy's numbers. Call on its event loop thread.

    `proxy` needs: config (.protocol, .service), stats (StatementStats),
    replicas (ReplicaView list), watchers (service -> PolicyWatcher), clients
    (sessions with a `.backends` dict keyed by target: -1 the primary, >= 0 a
    replica). Optional: `telemetry` (TelemetryExporter: its `dropped` counter
    unless `telemetry_dropped` is given) and `udp` (UdpListener).
    """
    stats = proxy.stats
    if telemetry_dropped is None:
        exporter = getattr(proxy, "telemetry", None)
        telemetry_dropped = exporter.dropped if exporter is not None else 0
    udp = getattr(proxy, "udp", None)
    if udp is not None:
        app_operations = [(key, tuple(h.counts), h.sum) for key, h in udp.stats.histograms.items()]
        udp_dropped = list(udp.stats.dropped.items())
    else:
        app_operations, udp_dropped = [], []
    statements = [(key, tuple(h.counts), h.sum, h.errors, tuple(h.reasons.items()))
                  for key, h in stats.histograms.items()]
    if proxy.watchers:
        policies = [(service, w.version, w.age_s) for service, w in proxy.watchers.items()]
    else:
        policies = [(proxy.config.service, 0, None)]   # no policy plane: the configured --mode
    # The mode each route with traffic is served in now. Services without a policy
    # watcher (only possible with Redis configured) show the configured mode rather
    # than starting one for a name a client made up.
    routes = {(service, route) for (service, route, _op, _role) in stats.histograms}
    route_modes = []
    for service, route in sorted(routes):
        if service in proxy.watchers or proxy.config.redis_url is None:
            route_modes.append((service, route, str(proxy.policy_for(service, route))))
        else:
            route_modes.append((service, route, str(proxy.policy)))
    primary = replica = 0
    for client in proxy.clients:
        for target in client.backends:
            if target == PRIMARY:
                primary += 1
            else:
                replica += 1
    return ProxySnapshot(
        db_system=proxy.config.protocol,
        statements=statements,
        fallbacks=list(stats.fallbacks.items()),
        replicas=[(v.name, v.lag_ms, v.lag_bytes, v.healthy) for v in proxy.replicas],
        policies=policies,
        client_connections=len(proxy.clients),
        backend_connections={"primary": primary, "replica": replica},
        errors=list(stats.errors.items()),
        route_overflow=list(stats.routes_overflowed.items()),
        hints_ignored=list(stats.hints_ignored.items()),
        route_modes=route_modes,
        telemetry_dropped=telemetry_dropped,
        app_operations=app_operations,
        udp_dropped=udp_dropped,
    )


class SnapshotCollector:
    """A prometheus_client collector over one snapshot (safe in any thread)."""

    def __init__(self, snapshot: ProxySnapshot):
        self.snapshot = snapshot

    def collect(self):
        snap = self.snapshot
        yield from self._statements(snap)
        yield from self._replicas(snap)
        yield from self._policy(snap)
        yield from self._connections(snap)
        yield from self._proxy_counters(snap)
        yield from self._app(snap)

    @staticmethod
    def _statements(snap):
        duration = HistogramMetricFamily(
            DURATION, "Duration of database client operations through the proxy, to the last byte of the reply.",
            labels=("db_system_name",) + STATEMENT_LABELS)
        errors = CounterMetricFamily(
            "clidash_proxy_statement_errors", "Statements that ended in an error, per route.",
            labels=STATEMENT_LABELS)
        routed = CounterMetricFamily(
            "clidash_proxy_routed", "Statements routed, by target and the routing decision's reason.",
            labels=("service", "route", "target_role", "reason"))
        for (service, route, operation, role), counts, total, failed, reasons in snap.statements:
            duration.add_metric((snap.db_system, service, route, role, operation),
                                cumulative_buckets(counts), total)
            errors.add_metric((service, route, role, operation), failed)
            for reason, n in reasons:
                routed.add_metric((service, route, role, reason), n)
        fallbacks = CounterMetricFamily(
            "clidash_proxy_fallbacks", "Reads that wanted a replica but went to the primary, by reason.",
            labels=("service", "reason"))
        for (service, reason), n in snap.fallbacks:
            fallbacks.add_metric((service, reason), n)
        return duration, errors, routed, fallbacks

    @staticmethod
    def _replicas(snap):
        lag_s = GaugeMetricFamily("clidash_proxy_replica_lag_seconds",
                                  "Replica replay lag: time since the primary first had WAL the replica lacks.",
                                  labels=("replica",))
        lag_bytes = GaugeMetricFamily("clidash_proxy_replica_lag_bytes",
                                      "WAL bytes the replica has yet to replay.", labels=("replica",))
        healthy = GaugeMetricFamily("clidash_proxy_replica_healthy",
                                    "1 while the replica's health probe succeeds, else 0.", labels=("replica",))
        for name, lag_ms, lag_b, ok in snap.replicas:
            if lag_ms is not None:
                lag_s.add_metric((name,), lag_ms / 1000.0)
            if lag_b is not None:
                lag_bytes.add_metric((name,), lag_b)
            healthy.add_metric((name,), 1 if ok else 0)
        return lag_s, lag_bytes, healthy

    @staticmethod
    def _policy(snap):
        version = GaugeMetricFamily("clidash_proxy_policy_version",
                                    "The applied policy's _version (0: the configured --mode, no policy from Redis).",
                                    labels=("service",))
        age = GaugeMetricFamily("clidash_proxy_policy_age_seconds",
                                "Seconds since Redis last answered for this service's policy (+Inf: never).",
                                labels=("service",))
        for service, applied, age_s in snap.policies:
            version.add_metric((service,), applied)
            if age_s is not None:
                age.add_metric((service,), age_s)
        modes = GaugeMetricFamily("clidash_proxy_route_mode",
                                  "1 for the consistency mode a route is served in now.",
                                  labels=("service", "route", "mode"))
        for service, route, mode in snap.route_modes:
            modes.add_metric((service, route, mode), 1)
        return version, age, modes

    @staticmethod
    def _connections(snap):
        conns = GaugeMetricFamily("clidash_proxy_client_connections", "Client connections open now.",
                                  value=snap.client_connections)
        backends = GaugeMetricFamily("clidash_proxy_backend_connections",
                                     "Server connections the proxy holds for its clients now.", labels=("role",))
        for role, n in snap.backend_connections.items():
            backends.add_metric((role,), n)
        return conns, backends

    @staticmethod
    def _proxy_counters(snap):
        errors = CounterMetricFamily("clidash_proxy_errors", "Proxy-level errors, by kind.", labels=("kind",))
        for kind, n in snap.errors:
            errors.add_metric((kind,), n)
        dropped = CounterMetricFamily("clidash_proxy_telemetry_dropped",
                                      "Telemetry windows dropped because exporting them would have blocked.",
                                      value=snap.telemetry_dropped)
        overflow = CounterMetricFamily("clidash_proxy_route_overflow",
                                       "Distinct routes folded into __other__ past the per-service route cap.",
                                       labels=("service",))
        for service, n in snap.route_overflow:
            overflow.add_metric((service,), n)
        hints = CounterMetricFamily("clidash_proxy_hints_ignored",
                                    "Per-query consistency hints ignored because they were weaker than the policy.",
                                    labels=("service",))
        for service, n in snap.hints_ignored:
            hints.add_metric((service,), n)
        return errors, dropped, overflow, hints

    @staticmethod
    def _app(snap):
        duration = HistogramMetricFamily(
            "clidash_app_operation_duration_seconds",
            "Application-reported operation latency, from UDP events.", labels=("service", "operation"))
        for (service, operation), counts, total in snap.app_operations:
            duration.add_metric((service, operation), cumulative_buckets(counts), total)
        dropped = CounterMetricFamily("clidash_proxy_udp_dropped",
                                      "UDP latency events rejected, by reason.", labels=("reason",))
        for reason, n in snap.udp_dropped:
            dropped.add_metric((reason,), n)
        return duration, dropped


class ProxyCollector:
    """The live collector: snapshots the proxy on every collect(). Only for a
    registry scraped on the proxy's event loop thread (tests, embedding)."""

    def __init__(self, proxy):
        self.proxy = proxy

    def collect(self):
        return SnapshotCollector(take_snapshot(self.proxy)).collect()


def proxy_registry(proxy) -> CollectorRegistry:
    """A registry holding only this proxy's live collector (no process or GC metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy))
    return registry


def render(snapshot: ProxySnapshot) -> bytes:
    """The Prometheus text exposition of a snapshot, from a registry holding
    only its collector. Thread-safe: reads nothing but the snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
