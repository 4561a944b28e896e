"""Application latency events over UDP: `{"svc": "payments", "op": "checkout", "latency": 45}`.

Applications fire one datagram per business operation (latency in ms); the
proxy folds valid ones into fixed-bucket histograms per (svc, op), the same
bounds as the statement histograms (seconds). The telemetry record carries
them per route (route = op) as `app_latency_hist` + `app_events`, and
/metrics as `clidash_app_operation_duration_seconds{service,operation}`.

The sender is untrusted and fire-and-forget: nothing here raises or answers.
Every rejected datagram is counted by reason (`clidash_proxy_udp_dropped_total`)
and otherwise ignored. Distinct (svc, op) pairs are capped so a noisy or
hostile sender cannot grow memory or label cardinality without bound.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from bisect import bisect_left
from collections import Counter

from clidash.proxy.stats import LATENCY_BUCKETS_S

log = logging.getLogger("clidash.proxy.udp")

DEFAULT_UDP_LISTEN = "127.0.0.1:5775"
MAX_DATAGRAM_BYTES = 2048
MAX_NAME_CHARS = 128
MAX_OPERATIONS = 1000   # distinct (svc, op) pairs kept; further ones are dropped as "too_many_operations"


class AppHistogram:
    """Per-bucket counts (last = +Inf, not cumulative) and the sum, in seconds."""

    __slots__ = ("counts", "sum")

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.sum = 0.0


class AppLatencyStats:
    """The folded events and the drop counters; no IO, so unit tests feed it bytes."""

    def __init__(self, max_operations: int = MAX_OPERATIONS):
        self.max_operations = max_operations
        self.histograms: dict[tuple[str, str], AppHistogram] = {}
        self.dropped: Counter = Counter()   # reason -> datagrams

    def feed(self, data: bytes) -> bool:
        """Fold one datagram in; False (and counted) if it was rejected."""
        reason = self._fold(data)
        if reason is not None:
            self.dropped[reason] += 1
            return False
        return True

    def _fold(self, data: bytes) -> str | None:
        if len(data) > MAX_DATAGRAM_BYTES:
            return "oversized"
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError):   # JSONDecodeError is a ValueError
            return "bad_json"
        if not isinstance(event, dict):
            return "bad_field"
        svc, op, latency = event.get("svc"), event.get("op"), event.get("latency")
        if not (isinstance(svc, str) and isinstance(op, str) and 0 < len(svc) <= MAX_NAME_CHARS
                and 0 < len(op) <= MAX_NAME_CHARS):
            return "bad_field"
        # bool is an int subclass; NaN/Infinity parse as floats: neither is a latency.
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
            return "bad_field"
        if latency < 0:
            return "negative_latency"
        key = (svc, op)
        hist = self.histograms.get(key)
        if hist is None:
            if len(self.histograms) >= self.max_operations:
                return "too_many_operations"
            hist = self.histograms[key] = AppHistogram()
        seconds = latency / 1000.0
        hist.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        hist.sum += seconds
        return None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, stats: AppLatencyStats):
        self.stats = stats

    def datagram_received(self, data, addr):
        try:
            self.stats.feed(data)
        except Exception:   # a bug here must never take the listener down
            self.stats.dropped["internal"] += 1
            log.exception("UDP event handling failed")

    def error_received(self, exc):
        # ICMP errors and the like on an unconnected socket: nothing to answer.
        log.debug("UDP listener: %s", exc)


class UdpListener:
    def __init__(self, host: str, port: int, stats: AppLatencyStats | None = None):
        self.host, self.port = host, port
        self.stats = stats or AppLatencyStats()
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.stats), local_addr=(self.host, self.port))

    @property
    def address(self) -> tuple[str, int]:
        return self._transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
