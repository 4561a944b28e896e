"""The live optimizer's Prometheus metrics (DESIGN section 7), on its own registry.

  clidash_optimizer_decisions_total{service,route,from_mode,to_mode}   every decision, holds included
  clidash_optimizer_reward{service,route}                              reward of the last decided window
  clidash_optimizer_latency_saved_seconds_total{service,route}         see `latency_saved_s`
  clidash_optimizer_stale_rate{service,route}                          audited stale rate, last window with audits
  clidash_optimizer_guardrail_total{kind}                              guardrail firings
  clidash_optimizer_telemetry_records_total{result}                    folded | bad | late | trimmed
                                    (late: also folded, but into a later window than its own)
  clidash_optimizer_windows_decided_total                              service windows decided here
  clidash_optimizer_policy_writes_failed_total{reason}                 floor (raced) | redis
  clidash_optimizer_redis_errors_total                                 failed loop iterations
  clidash_optimizer_owned_services                                     services this process decides
  clidash_optimizer_train_updates_total                                online gradient steps
  clidash_optimizer_model_info{model_version}                          1

Route labels are capped per service (`max_routes_per_service`, then `__other__`),
and services at MAX_SERVICES, as the proxy caps its own.
"""
from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

OTHER = "__other__"
MAX_SERVICES = 500


def hist_mean_s(bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """Mean latency (s) from non-cumulative bucket counts, each bucket at its midpoint
    (the +Inf bucket at the last bound); None for an empty histogram."""
    total = sum(counts)
    if not total or not bounds:
        return None
    acc, lower = 0.0, 0.0
    for i, c in enumerate(counts):
        upper = bounds[i] if i < len(bounds) else bounds[-1]
        acc += c * ((lower + upper) / 2 if i < len(bounds) else upper)
        lower = upper
    return acc / total


def latency_saved_s(replica_reads: int, primary_mean_s: float | None, replica_mean_s: float | None) -> float:
    """Estimated client time saved in a window by serving reads from replicas:
    replica reads x (mean primary read latency - mean replica read latency), means from
    the histograms' bucket midpoints. Only positive savings count (a Prometheus counter
    never decreases); with no primary latency known for the route yet, 0."""
    if not replica_reads or primary_mean_s is None or replica_mean_s is None:
        return 0.0
    return replica_reads * max(0.0, primary_mean_s - replica_mean_s)


class OptimizerMetrics:
    def __init__(self, max_routes_per_service: int = 200, model_version: str = ""):
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_routes_per_service = max_routes_per_service
        self._routes: dict[str, set[str]] = {}
        reg = self.registry
        route_labels = ("service", "route")
        self.decisions = Counter("clidash_optimizer_decisions", "Decisions per route and window, holds included.",
                                 ("service", "route", "from_mode", "to_mode"), registry=reg)
        self.reward = Gauge("clidash_optimizer_reward", "Reward of the route's last decided window.",
                            route_labels, registry=reg)
        self.latency_saved = Counter("clidash_optimizer_latency_saved_seconds",
                                     "Estimated client time saved by replica reads: replica reads x "
                                     "(mean primary - mean replica read latency), histogram midpoints.",
                                     route_labels, registry=reg)
        self.stale_rate = Gauge("clidash_optimizer_stale_rate",
                                "Audited stale-read rate (stale_found / stale_audited) of the last window "
                                "with audits.", route_labels, registry=reg)
        self.guardrail = Counter("clidash_optimizer_guardrail", "Guardrail firings, by kind.", ("kind",),
                                 registry=reg)
        self.records = Counter("clidash_optimizer_telemetry_records",
                               "Telemetry entries read: folded, bad (skipped), late (also folded, into a "
                               "later window than their own), trimmed (gone before they were read).", ("result",), registry=reg)
        self.windows = Counter("clidash_optimizer_windows_decided", "Service windows decided by this process.",
                               registry=reg)
        self.write_failures = Counter("clidash_optimizer_policy_writes_failed",
                                      "Policy changes not written: floor (a floor raced the change), redis.",
                                      ("reason",), registry=reg)
        self.redis_errors = Counter("clidash_optimizer_redis_errors", "Loop iterations that failed on Redis.",
                                    registry=reg)
        self.owned = Gauge("clidash_optimizer_owned_services", "Services this process decides (holds the lease).",
                           registry=reg)
        self.train_updates = Counter("clidash_optimizer_train_updates", "Online gradient steps.", registry=reg)
        self.model = Gauge("clidash_optimizer_model_info", "The model deciding (checkpoint name@sha256 prefix).",
                           ("model_version",), registry=reg)
        for result in ("folded", "bad", "late", "trimmed"):
            self.records.labels(result)
        if model_version:
            self.model.labels(model_version).set(1)

    def labels_for(self, service: str, route: str) -> tuple[str, str]:
        """(service, route) label values with the per-service route cap applied."""
        if service not in self._routes and len(self._routes) >= MAX_SERVICES:
            return OTHER, OTHER
        routes = self._routes.setdefault(service, set())
        if route not in routes:
            if len(routes) >= self.max_routes_per_service:
                return service, OTHER
            routes.add(route)
        return service, route

    def serve(self, host: str, port: int):
        """Start the /metrics listener (a daemon thread); returns the server (its .server_address)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
