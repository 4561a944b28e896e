"""Fold telemetry records (DESIGN section 6) into per-service sums over one decision window.

Pure: no Redis, no clocks. A record is validated completely before anything of
it is folded, so a malformed record changes nothing and is reported as
`BadRecord` (the caller counts it and moves on).

Folding rules, per (service, route):
  counts            add (reads by target, writes, errors, fallbacks, RYW exposure, audits)
  histograms        add bucket-wise (every record must use the same bucket bounds)
  mode              how many records reported each mode; `mode` is the most reported
                    (ties: the stronger), the proxies' view of the route's policy
Per replica (by name, over all routes and records of the window):
  lag_ms_max        the worst (max) lag seen; None while no record knew it
  healthy           healthy in every record of the window

A `ServiceWindow` round-trips through JSON (`to_json`/`from_json`) because
optimizer processes exchange their partial windows through Redis, and
`merge` adds two of them by the same rules.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from clidash.policy import Mode, ModeSpec, PolicyError

COUNT_FIELDS = ("reads_primary", "reads_replica", "writes", "errors", "ryw_exposed_reads",
                "stale_audited", "stale_found")
HIST_FIELDS = ("read_primary_hist", "read_replica_hist", "write_hist")
MAX_RECORD_BYTES = 4 << 20


class BadRecord(ValueError):
    """A telemetry entry that cannot be folded; the message says what is wrong."""


# --------------------------------------------------------------------------- model


@dataclass
class RouteSums:
    route: str
    latency_buckets_s: list[float]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_FIELDS, 0))
    fallbacks: dict[str, int] = field(default_factory=dict)
    hists: dict[str, list[int]] = field(default_factory=dict)
    modes: dict[str, int] = field(default_factory=dict)       # reported mode -> records

    @property
    def reads(self) -> int:
        return self.counts["reads_primary"] + self.counts["reads_replica"]

    @property
    def mode(self) -> str | None:
        """The mode most records reported; a tie goes to the stronger (the safe reading)."""
        if not self.modes:
            return None
        return min(self.modes, key=lambda m: (-self.modes[m], _strength(m)))

    def as_record(self) -> dict[str, Any]:
        """This route in the telemetry record's route format (RouteState.from_record reads it)."""
        zeros = [0] * (len(self.latency_buckets_s) + 1)
        return {"route": self.route, "mode": self.mode or "STRONG", **self.counts,
                "fallbacks": dict(self.fallbacks), "latency_buckets_s": list(self.latency_buckets_s),
                **{h: list(self.hists.get(h, zeros)) for h in HIST_FIELDS}}


@dataclass
class ReplicaSums:
    lag_ms_max: float | None = None
    healthy: bool = True


@dataclass
class ServiceWindow:
    """One service's telemetry over one decision window (or a process's share of it)."""

    service: str
    window: int                                           # k: covers [k * window_s, (k + 1) * window_s)
    routes: dict[str, RouteSums] = field(default_factory=dict)
    replicas: dict[str, ReplicaSums] = field(default_factory=dict)
    records: int = 0
    proxies: set[str] = field(default_factory=set)
    policy_version: int = 0                               # the newest the proxies reported

    def replica_list(self) -> list[dict[str, Any]]:
        return [{"name": name, "lag_ms_max": r.lag_ms_max, "healthy": r.healthy}
                for name, r in sorted(self.replicas.items())]

    @property
    def max_lag_ms(self) -> float | None:
        lags = [r.lag_ms_max for r in self.replicas.values() if r.lag_ms_max is not None]
        return max(lags) if lags else None

    # -- folding

    def fold(self, record: Mapping[str, Any]) -> None:
        """Add one record that `validate_record` accepted."""
        self.records += 1
        self.proxies.add(str(record.get("proxy", "")))
        self.policy_version = max(self.policy_version, int(record.get("policy_version") or 0))
        for rep in record.get("replicas") or ():
            self._fold_replica(rep["name"], rep.get("lag_ms_max"), bool(rep.get("healthy", True)))
        for entry in record.get("routes") or ():
            self._fold_route(entry)

    def _fold_replica(self, name: str, lag: float | None, healthy: bool) -> None:
        sums = self.replicas.get(name)
        if sums is None:
            sums = self.replicas[name] = ReplicaSums(None, True)
        if lag is not None:
            sums.lag_ms_max = lag if sums.lag_ms_max is None else max(sums.lag_ms_max, lag)
        sums.healthy = sums.healthy and healthy

    def _fold_route(self, entry: Mapping[str, Any]) -> None:
        bounds = [float(b) for b in entry.get("latency_buckets_s") or ()]
        sums = self.routes.get(entry["route"])
        if sums is None:
            sums = self.routes[entry["route"]] = RouteSums(entry["route"], bounds)
        elif bounds and not sums.latency_buckets_s and not sums.hists:
            sums.latency_buckets_s = bounds         # earlier records of the route had no histograms
        for name in COUNT_FIELDS:
            sums.counts[name] += int(entry.get(name) or 0)
        for reason, n in (entry.get("fallbacks") or {}).items():
            sums.fallbacks[reason] = sums.fallbacks.get(reason, 0) + int(n)
        for name in HIST_FIELDS:
            if entry.get(name):
                _add_into(sums.hists.setdefault(name, [0] * (len(bounds) + 1)), entry[name])
        if entry.get("mode"):
            sums.modes[entry["mode"]] = sums.modes.get(entry["mode"], 0) + 1

    def merge(self, other: "ServiceWindow") -> "ServiceWindow":
        """Add `other` (same service) into this window; returns self. Bucket bounds must agree."""
        if other.service != self.service:
            raise ValueError(f"cannot merge {other.service!r} into {self.service!r}")
        self.records += other.records
        self.proxies |= other.proxies
        self.policy_version = max(self.policy_version, other.policy_version)
        for name, rep in other.replicas.items():
            self._fold_replica(name, rep.lag_ms_max, rep.healthy)
        for name, theirs in other.routes.items():
            mine = self.routes.get(name)
            if mine is None:
                mine = self.routes[name] = RouteSums(name, list(theirs.latency_buckets_s))
            elif not mine.hists and not mine.latency_buckets_s:
                mine.latency_buckets_s = list(theirs.latency_buckets_s)
            elif theirs.latency_buckets_s and mine.latency_buckets_s != theirs.latency_buckets_s:
                raise ValueError(f"route {name!r}: latency bucket bounds differ between windows")
            for key, n in theirs.counts.items():
                mine.counts[key] = mine.counts.get(key, 0) + n
            for key, n in theirs.fallbacks.items():
                mine.fallbacks[key] = mine.fallbacks.get(key, 0) + n
            for key, hist in theirs.hists.items():
                _add_into(mine.hists.setdefault(key, [0] * len(hist)), hist)
            for key, n in theirs.modes.items():
                mine.modes[key] = mine.modes.get(key, 0) + n
        return self

    # -- JSON (partials exchanged through Redis)

    def to_json(self) -> str:
        return json.dumps({
            "service": self.service, "window": self.window, "records": self.records,
            "proxies": sorted(self.proxies), "policy_version": self.policy_version,
            "replicas": {n: [r.lag_ms_max, r.healthy] for n, r in self.replicas.items()},
            "routes": {n: {"b": r.latency_buckets_s, "c": r.counts, "f": r.fallbacks, "h": r.hists, "m": r.modes}
                       for n, r in self.routes.items()}}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ServiceWindow":
        d = json.loads(text)
        win = cls(d["service"], int(d["window"]), records=int(d["records"]), proxies=set(d["proxies"]),
                  policy_version=int(d["policy_version"]))
        win.replicas = {n: ReplicaSums(lag, bool(ok)) for n, (lag, ok) in d["replicas"].items()}
        win.routes = {n: RouteSums(n, [float(b) for b in r["b"]], {**dict.fromkeys(COUNT_FIELDS, 0), **r["c"]},
                                   r["f"], r["h"], r["m"])
                      for n, r in d["routes"].items()}
        return win


def _add_into(into: list, delta) -> None:
    for i, n in enumerate(delta):
        into[i] += n


def _strength(mode: str) -> tuple[int, float]:
    """Smaller is stronger (the order of clidash.policy); unparsable sorts as the strongest."""
    try:
        spec = ModeSpec.parse(mode)
    except PolicyError:
        return (-1, 0.0)
    return int(spec.mode), (spec.max_lag_ms or 0.0) if spec.mode is Mode.BOUNDED else 0.0


# --------------------------------------------------------------------------- parsing and validation


def parse_record(raw: Any) -> dict[str, Any]:
    """The `record` field of a clidash:telemetry entry, decoded and validated."""
    if raw is None:
        raise BadRecord("entry has no `record` field")
    if isinstance(raw, bytes):
        if len(raw) > MAX_RECORD_BYTES:
            raise BadRecord(f"record is {len(raw)} bytes, over {MAX_RECORD_BYTES}")
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise BadRecord("record is not UTF-8") from None
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"record is {len(raw)} characters, over {MAX_RECORD_BYTES}")
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise BadRecord(f"record is not JSON: {exc}") from None
    validate_record(record)
    return record


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_record(record: Any) -> None:
    """Raise BadRecord unless `record` has the shape `ServiceWindow.fold` relies on."""
    if not isinstance(record, dict):
        raise BadRecord(f"record must be a JSON object, got {type(record).__name__}")
    service = record.get("service")
    if not isinstance(service, str) or not service or any(c in service for c in "\r\n\0"):
        raise BadRecord(f"record `service` must be a non-empty one-line string, got {service!r}")
    if not _is_number(record.get("window_start")):
        raise BadRecord(f"record `window_start` must be a number, got {record.get('window_start')!r}")
    if not _is_number(record.get("window_s")) or record["window_s"] <= 0:
        raise BadRecord(f"record `window_s` must be a positive number, got {record.get('window_s')!r}")
    version = record.get("policy_version", 0)
    if version is not None and not _is_count(version):
        raise BadRecord(f"record `policy_version` must be a non-negative integer, got {version!r}")
    replicas = record.get("replicas") or []
    if not isinstance(replicas, list):
        raise BadRecord("record `replicas` must be a list")
    for rep in replicas:
        if not isinstance(rep, dict) or not isinstance(rep.get("name"), str):
            raise BadRecord(f"replica entry must be an object with a `name`, got {rep!r}")
        lag = rep.get("lag_ms_max")
        if lag is not None and (not _is_number(lag) or lag < 0):
            raise BadRecord(f"replica {rep['name']!r}: `lag_ms_max` must be a number >= 0 or null, got {lag!r}")
        if not isinstance(rep.get("healthy", True), bool):
            raise BadRecord(f"replica {rep['name']!r}: `healthy` must be true or false")
    routes = record.get("routes")
    if not isinstance(routes, list):
        raise BadRecord("record `routes` must be a list")
    for entry in routes:
        _validate_route(entry)


def _validate_route(entry: Any) -> None:
    if not isinstance(entry, dict):
        raise BadRecord(f"route entry must be an object, got {type(entry).__name__}")
    name = entry.get("route")
    if not isinstance(name, str) or not name:
        raise BadRecord(f"route entry needs a non-empty `route` string, got {name!r}")
    for key in COUNT_FIELDS:
        if key in entry and not _is_count(entry[key]):
            raise BadRecord(f"route {name!r}: `{key}` must be a non-negative integer, got {entry[key]!r}")
    mode = entry.get("mode")
    if mode is not None:
        try:
            ModeSpec.parse(mode) if isinstance(mode, str) else None
        except PolicyError as exc:
            raise BadRecord(f"route {name!r}: {exc}") from None
        if not isinstance(mode, str):
            raise BadRecord(f"route {name!r}: `mode` must be a string")
    fallbacks = entry.get("fallbacks") or {}
    if not isinstance(fallbacks, dict) or not all(isinstance(k, str) and _is_count(v) for k, v in fallbacks.items()):
        raise BadRecord(f"route {name!r}: `fallbacks` must map reasons to non-negative integers")
    bounds = entry.get("latency_buckets_s") or []
    if not isinstance(bounds, list) or not all(_is_number(b) for b in bounds):
        raise BadRecord(f"route {name!r}: `latency_buckets_s` must be a list of numbers")
    if any(b >= c for b, c in zip(bounds, bounds[1:])):
        raise BadRecord(f"route {name!r}: `latency_buckets_s` must increase")
    for key in HIST_FIELDS:
        hist = entry.get(key)
        if not hist:
            continue
        if not isinstance(hist, list) or len(hist) != len(bounds) + 1 or not all(_is_count(c) for c in hist):
            raise BadRecord(f"route {name!r}: `{key}` must hold {len(bounds) + 1} non-negative integer counts "
                            f"(one per bucket bound plus +Inf)")


def check_compatible(window: ServiceWindow, record: Mapping[str, Any]) -> None:
    """BadRecord when a route's bucket bounds differ from what the window already holds."""
    for entry in record.get("routes") or ():
        sums = window.routes.get(entry["route"])
        if sums is not None and entry.get("latency_buckets_s") and sums.latency_buckets_s and \
                [float(b) for b in entry["latency_buckets_s"]] != sums.latency_buckets_s:
            raise BadRecord(f"route {entry['route']!r}: latency bucket bounds differ from earlier records")
