"""In-memory statement statistics: the only thing the hot path touches.

Each completed statement increments plain counters of one histogram keyed by
(service, route, operation, target_role). Exporters (Prometheus collector,
telemetry windows) read and diff these at their own pace, never per query.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

# Seconds; shared by the Prometheus histograms and the telemetry record.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                     0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OTHER_ROUTE = "__other__"
DEFAULT_MAX_ROUTES_PER_SERVICE = 200


class StatementHistogram:
    """Fixed-bucket latency histogram plus per-reason routing counts."""

    __slots__ = ("counts", "sum", "errors", "reasons")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)   # last slot is +Inf
        self.sum = 0.0
        self.errors = 0
        self.reasons: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.counts)


class StatementStats:
    def __init__(self, max_routes_per_service: int = DEFAULT_MAX_ROUTES_PER_SERVICE):
        self.max_routes_per_service = max_routes_per_service
        self.histograms: dict[tuple[str, str, str, str], StatementHistogram] = {}
        self._routes: dict[str, set[str]] = {}
        # Keys past the route cap, pointing at their service's __other__ histogram
        # (kept apart so exporters never see one histogram twice).
        self._overflow_aliases: dict[tuple[str, str, str, str], StatementHistogram] = {}
        self.routes_overflowed: Counter = Counter()   # service -> distinct routes folded into __other__
        self.fallbacks: Counter = Counter()           # (service, reason)
        self.errors: Counter = Counter()              # kind -> count (proxy-level errors)
        self.hints_ignored: Counter = Counter()       # service -> hints weaker than the policy
        # (service, route) -> [ryw_exposed_reads, stale_audited, stale_found], for telemetry
        self.route_extras: dict[tuple[str, str], list[int]] = {}

    def record(self, service: str, route: str, operation: str, role: str, reason: str,
               seconds: float, failed: bool) -> None:
        key = (service, route, operation, role)
        hist = self.histograms.get(key)
        if hist is None:
            hist = self._overflow_aliases.get(key) or self._new_histogram(key)
        hist.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        hist.sum += seconds
        reasons = hist.reasons
        reasons[reason] = reasons.get(reason, 0) + 1
        if failed:
            hist.errors += 1

    def _new_histogram(self, key):
        service, route, operation, role = key
        routes = self._routes.setdefault(service, set())
        if route not in routes:
            if len(routes) >= self.max_routes_per_service and route != OTHER_ROUTE:
                if not any(k[0] == service and k[1] == route for k in self._overflow_aliases):
                    self.routes_overflowed[service] += 1
                other_key = (service, OTHER_ROUTE, operation, role)
                hist = self.histograms.get(other_key)
                if hist is None:
                    hist = self.histograms[other_key] = StatementHistogram()
                self._overflow_aliases[key] = hist
                return hist
            routes.add(route)
        hist = self.histograms[key] = StatementHistogram()
        return hist

    def count_route_extra(self, service: str, route: str, ryw_exposed: int = 0, audited: int = 0,
                          stale: int = 0) -> None:
        extras = self.route_extras.get((service, route))
        if extras is None:
            if len(self.route_extras) >= self.max_routes_per_service * 16:
                route = OTHER_ROUTE   # bounded like the histograms
            extras = self.route_extras.setdefault((service, route), [0, 0, 0])
        extras[0] += ryw_exposed
        extras[1] += audited
        extras[2] += stale

    def record_fallback(self, service: str, reason: str) -> None:
        self.fallbacks[(service, reason)] += 1

    def record_error(self, kind: str) -> None:
        self.errors[kind] += 1
