"""Telemetry windows for the optimizer (DESIGN section 6): XADD clidash:telemetry.

Every `window_s` the exporter copies the cumulative counters (statement stats,
application UDP events), subtracts the previous copy and XADDs one record per
service that had traffic in the window. DESIGN says "one per proxy per window";
a proxy usually carries one service, but clients may name others (sqlcomment
`service`), so each gets its own record (the optimizer keys on service anyway).
Idle windows produce nothing.

Record fields beyond or short of DESIGN section 6:
- `replicas[].lag_ms_max` is the replica's lag when the window closes, not a
  maximum over the window (the lag monitor keeps only the current value).
- `ryw_exposed_reads` counts reads in READ_YOUR_WRITES mode by sessions that
  wrote before; `stale_audited`/`stale_found` come from proxy/pg/audit.py.
- Extension: routes that received application events over UDP (route = op)
  carry `app_latency_hist` (per-bucket counts, same bounds) and `app_events`.
  A route with only app events has zero statement counts.
- Statements of operation "other" (BEGIN, SET, ...) count in `errors` only.

Export never blocks a query: it runs in its own task, and if the XADD has not
finished within `timeout_s` (Redis slow or down) the window is dropped and
counted in `dropped` (`clidash_proxy_telemetry_dropped_total`). A dropped
window's counts are not carried into the next one: every record covers exactly
its own window.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from clidash.redis_keys import TELEMETRY_STREAM
from clidash.proxy.routing import FALLBACK_REASONS
from clidash.proxy.stats import LATENCY_BUCKETS_S

log = logging.getLogger("clidash.proxy.telemetry")

XADD_TIMEOUT_S = 0.2


# -- window diff (pure) -----------------------------------------------------------


@dataclass
class StatementDelta:
    counts: list
    errors: int
    reasons: dict


def snapshot_statements(histograms) -> dict:
    """Plain copies of StatementStats.histograms: key -> (counts, errors, reasons)."""
    return {key: (tuple(h.counts), h.errors, dict(h.reasons)) for key, h in histograms.items()}


def snapshot_app(histograms) -> dict:
    """Plain copies of AppLatencyStats.histograms: (svc, op) -> counts."""
    return {key: tuple(h.counts) for key, h in histograms.items()}


def _sub(cur, prev):
    return [c - p for c, p in zip(cur, prev)] if prev is not None else list(cur)


def diff_statements(prev: dict, cur: dict) -> dict:
    """Per-key deltas of two snapshot_statements() copies; keys without new statements are left out."""
    out = {}
    for key, (counts, errors, reasons) in cur.items():
        before = prev.get(key)
        delta = _sub(counts, before[0] if before else None)
        if not any(delta):
            continue
        old_reasons = before[2] if before else {}
        out[key] = StatementDelta(delta, errors - (before[1] if before else 0),
                                  {r: n - old_reasons.get(r, 0) for r, n in reasons.items()
                                   if n - old_reasons.get(r, 0)})
    return out


def diff_app(prev: dict, cur: dict) -> dict:
    out = {}
    for key, counts in cur.items():
        delta = _sub(counts, prev.get(key))
        if any(delta):
            out[key] = delta
    return out


# -- record building (pure) -------------------------------------------------------


def _zeros():
    return [0] * (len(LATENCY_BUCKETS_S) + 1)


def _route_entry(route: str, mode: str) -> dict:
    return {"route": route, "mode": mode, "reads_primary": 0, "reads_replica": 0, "writes": 0, "errors": 0,
            "fallbacks": {r: 0 for r in FALLBACK_REASONS},
            "latency_buckets_s": list(LATENCY_BUCKETS_S),
            "read_primary_hist": _zeros(), "read_replica_hist": _zeros(), "write_hist": _zeros(),
            "ryw_exposed_reads": 0, "stale_audited": 0, "stale_found": 0}


def _add(into: list, delta: list) -> None:
    for i, n in enumerate(delta):
        into[i] += n


def build_records(stmt_deltas: dict, app_deltas: dict, *, extras: dict | None = None, proxy_id: str,
                  window_start: float,
                  window_s: float, replicas: list, policy_version, mode_for) -> list[dict]:
    """One record per service with traffic. `replicas`: [(name, lag_ms, healthy)];
    `policy_version(service)` -> int; `mode_for(service, route)` -> str."""
    routes: dict[str, dict[str, dict]] = {}   # service -> route -> entry

    def entry(service, route):
        by_route = routes.setdefault(service, {})
        e = by_route.get(route)
        if e is None:
            e = by_route[route] = _route_entry(route, mode_for(service, route))
        return e

    for (service, route, operation, role), d in sorted(stmt_deltas.items()):
        e = entry(service, route)
        n = sum(d.counts)
        e["errors"] += d.errors
        if operation == "read":
            if role == "replica":
                e["reads_replica"] += n
                _add(e["read_replica_hist"], d.counts)
            else:
                e["reads_primary"] += n
                _add(e["read_primary_hist"], d.counts)
                for reason in FALLBACK_REASONS:
                    e["fallbacks"][reason] += d.reasons.get(reason, 0)
        elif operation == "write":
            e["writes"] += n
            _add(e["write_hist"], d.counts)
    # (service, route) -> [ryw_exposed_reads, stale_audited, stale_found] deltas.
    for (service, route), (exposed, audited, stale) in sorted((extras or {}).items()):
        e = entry(service, route)
        e["ryw_exposed_reads"] += exposed
        e["stale_audited"] += audited
        e["stale_found"] += stale
    for (service, op), counts in sorted(app_deltas.items()):
        e = entry(service, op)
        e["app_latency_hist"] = list(counts)
        e["app_events"] = sum(counts)

    replica_list = [{"name": name, "lag_ms_max": lag_ms, "healthy": bool(healthy)}
                    for name, lag_ms, healthy in replicas]
    return [{"proxy": proxy_id, "service": service, "protocol": "postgresql",
             "window_start": window_start, "window_s": window_s,
             "policy_version": policy_version(service), "replicas": replica_list,
             "routes": list(by_route.values())}
            for service, by_route in sorted(routes.items())]


# -- the exporter task ------------------------------------------------------------


@dataclass
class WindowState:
    """The cumulative copies the next window is diffed against."""
    statements: dict = field(default_factory=dict)
    app: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)


class TelemetryExporter:
    def __init__(self, proxy, redis_url: str, proxy_id: str, window_s: float = 1.0, maxlen: int = 10_000,
                 timeout_s: float = XADD_TIMEOUT_S):
        self.proxy = proxy
        self.redis_url = redis_url
        self.proxy_id = proxy_id
        self.window_s = window_s
        self.maxlen = maxlen
        self.timeout_s = timeout_s
        self.dropped = 0     # windows not exported (Redis slow, down or erroring)
        self.exported = 0    # records XADDed
        self._state = WindowState()
        self._redis = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        import redis.asyncio as aioredis
        # Short socket timeouts and no retries: a window that cannot go out at once is dropped.
        self._redis = aioredis.Redis.from_url(self.redis_url, socket_timeout=self.timeout_s,
                                              socket_connect_timeout=self.timeout_s, retry_on_timeout=False,
                                              retry=None)
        self._state = self._snapshot()   # counts from before start belong to no window
        self._task = asyncio.get_running_loop().create_task(self._run(), name="clidash-telemetry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._redis is not None:
            try:
                await self._redis.aclose()
            except Exception:   # closing a connection to a dead Redis may fail; nothing to do
                pass
            self._redis = None

    def _snapshot(self) -> WindowState:
        udp = getattr(self.proxy, "udp", None)
        return WindowState(snapshot_statements(self.proxy.stats.histograms),
                           snapshot_app(udp.stats.histograms) if udp is not None else {},
                           {key: tuple(v) for key, v in self.proxy.stats.route_extras.items()})

    def close_window(self, window_start: float) -> list[dict]:
        """Diff against the previous window and build its records (runs on the loop; no IO)."""
        cur = self._snapshot()
        stmt = diff_statements(self._state.statements, cur.statements)
        app = diff_app(self._state.app, cur.app)
        extras = diff_app(self._state.extras, cur.extras)
        self._state = cur
        if not stmt and not app and not extras:
            return []
        proxy = self.proxy
        return build_records(
            stmt, app, extras=extras, proxy_id=self.proxy_id, window_start=window_start, window_s=self.window_s,
            replicas=[(v.name, v.lag_ms, v.healthy) for v in proxy.replicas],
            policy_version=lambda s: proxy.watchers[s].version if s in proxy.watchers else 0,
            mode_for=self._mode_for)

    def _mode_for(self, service: str, route: str) -> str:
        # policy_for() starts a watcher for an unknown service; services seen only
        # over UDP are untrusted input, so they get the configured mode instead.
        proxy = self.proxy
        if service in proxy.watchers or proxy.config.redis_url is None:
            return str(proxy.policy_for(service, route))
        return str(proxy.policy)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        window_start = time.time()
        deadline = loop.time() + self.window_s
        while True:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            deadline += self.window_s
            try:
                records = self.close_window(window_start)
            except Exception:
                log.exception("building the telemetry window failed")
                records = None
                self.dropped += 1
            window_start += self.window_s
            if records:
                await self._send(records)

    async def _send(self, records: list[dict]) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                pipe = self._redis.pipeline(transaction=False)
                for record in records:
                    pipe.xadd(TELEMETRY_STREAM, {"record": json.dumps(record, separators=(",", ":"))},
                              maxlen=self.maxlen, approximate=True)
                await pipe.execute()
            self.exported += len(records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # TimeoutError, ConnectionError, ResponseError ...
            self.dropped += 1
            log.debug("telemetry window dropped: %r", exc)
