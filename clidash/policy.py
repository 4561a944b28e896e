"""Consistency modes, their order, and the per-service policy: the contract shared
by proxy, optimizer and CLI.

Stored form (DESIGN section 5): a Redis hash per service whose fields are routes
(`*` = the service default) and whose values are RoutePolicy JSON, plus a floor
hash (route -> weakest mode allowed). This module only models and validates that
data; reading and writing Redis lives in `clidash.policy_store` and
`clidash.proxy.policy_watcher`.
"""
from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

DEFAULT_ROUTE = "*"          # the service-wide entry, in both the policy and the floor hash
VERSION_FIELD = "_version"   # the policy hash's change counter; never a route


class PolicyError(ValueError):
    """A mode or policy value that cannot be used; the message says why."""


class Mode(enum.IntEnum):
    """Strongest first: a higher value is a weaker guarantee."""

    STRONG = 0
    READ_YOUR_WRITES = 1
    BOUNDED = 2
    EVENTUAL = 3

    def at_least_as_strong_as(self, other: "Mode") -> bool:
        return self <= other


def _format_ms(value: float) -> int | float:
    """250.0 -> 250 so that JSON and `BOUNDED:250` read the way people write them."""
    return int(value) if float(value).is_integer() else value


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """A mode plus its parameter (BOUNDED needs max_lag_ms)."""

    mode: Mode
    max_lag_ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ModeSpec":
        """'STRONG', 'READ_YOUR_WRITES', 'EVENTUAL' or 'BOUNDED:<ms>' (case-insensitive)."""
        name, _, arg = text.strip().partition(":")
        try:
            mode = Mode[name.strip().upper().replace("-", "_")]
        except KeyError:
            valid = ", ".join(m.name for m in Mode)
            raise PolicyError(f"unknown consistency mode {text!r}; expected one of {valid} (BOUNDED:<ms>)") from None
        if mode is Mode.BOUNDED:
            try:
                lag = float(arg)
            except ValueError:
                raise PolicyError(f"BOUNDED needs a lag bound in milliseconds, e.g. BOUNDED:250 (got {text!r})") from None
            if not math.isfinite(lag):
                raise PolicyError(f"BOUNDED lag bound must be a finite number of milliseconds (got {text!r})")
            if lag < 0:
                raise PolicyError(f"BOUNDED lag bound must be >= 0 ms (got {lag})")
            return cls(mode, lag)
        if arg:
            raise PolicyError(f"mode {mode.name} takes no parameter (got {text!r})")
        return cls(mode)

    def __str__(self) -> str:
        if self.mode is Mode.BOUNDED:
            return f"BOUNDED:{_format_ms(self.max_lag_ms or 0.0)}"
        return self.mode.name


STRONG = ModeSpec(Mode.STRONG)


# --------------------------------------------------------------------------- strength order


def _strength_key(spec: ModeSpec) -> tuple[int, float]:
    # Smaller is stronger: the mode first, then (BOUNDED only) the lag bound.
    lag = (spec.max_lag_ms or 0.0) if spec.mode is Mode.BOUNDED else 0.0
    return int(spec.mode), lag


def is_weaker(spec: ModeSpec, than: ModeSpec) -> bool:
    """True when `spec` promises strictly less than `than`
    (STRONG > READ_YOUR_WRITES > BOUNDED, smaller ms stronger > EVENTUAL)."""
    return _strength_key(spec) > _strength_key(than)


def stronger(a: ModeSpec, b: ModeSpec) -> ModeSpec:
    """The stronger of two specs (`a` when they are equally strong)."""
    return b if is_weaker(a, b) else a


def apply_floor(spec: ModeSpec, floor: ModeSpec | None) -> ModeSpec:
    """`spec`, raised to `floor` when it is weaker: a floor is a minimum guarantee."""
    return spec if floor is None else stronger(spec, floor)


# --------------------------------------------------------------------------- one route's policy


def rfc3339_now() -> str:
    """UTC, millisecond precision, `Z` suffix: 2025-12-04T10:15:30.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_rfc3339(text: str) -> None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in text.upper():
        raise PolicyError(f"updated_at must be an RFC 3339 timestamp with a zone, e.g. 2025-12-04T10:15:30Z "
                          f"(got {text!r})")


def _spec_from_fields(obj: Mapping[str, Any]) -> ModeSpec:
    name = obj.get("mode")
    if not isinstance(name, str):
        raise PolicyError('policy value needs a "mode" string, e.g. {"mode":"EVENTUAL"}')
    try:
        mode = Mode[name.strip().upper()]
    except KeyError:
        valid = ", ".join(m.name for m in Mode)
        raise PolicyError(f"unknown consistency mode {name!r}; expected one of {valid}") from None
    lag = obj.get("max_lag_ms")
    if mode is not Mode.BOUNDED:
        if lag is not None:
            raise PolicyError(f"max_lag_ms only applies to BOUNDED, not {mode.name}")
        return ModeSpec(mode)
    if lag is None:
        raise PolicyError('BOUNDED needs "max_lag_ms" (milliseconds, >= 0)')
    if isinstance(lag, bool) or not isinstance(lag, (int, float)) or not math.isfinite(lag):
        raise PolicyError(f"max_lag_ms must be a number of milliseconds (got {lag!r})")
    if lag < 0:
        raise PolicyError(f"max_lag_ms must be >= 0 (got {lag!r})")
    return ModeSpec(mode, float(lag))


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """One route's mode with its provenance: who set it (source), why, and when."""

    spec: ModeSpec
    source: str = "operator"
    reason: str = ""
    updated_at: str = field(default_factory=rfc3339_now)  # RFC 3339, kept as written

    @property
    def mode(self) -> Mode:
        return self.spec.mode

    @property
    def max_lag_ms(self) -> float | None:
        return self.spec.max_lag_ms

    def to_dict(self) -> dict[str, Any]:
        # Key order is part of the contract: it is what `redis-cli HGETALL` shows.
        out: dict[str, Any] = {"mode": self.spec.mode.name}
        if self.spec.mode is Mode.BOUNDED:
            out["max_lag_ms"] = _format_ms(self.spec.max_lag_ms or 0.0)
        out.update(source=self.source, reason=self.reason, updated_at=self.updated_at)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "RoutePolicy":
        """Validate a decoded value; source, reason and updated_at may be absent (hand-written values)."""
        if not isinstance(obj, Mapping):
            raise PolicyError(f"policy value must be a JSON object, got {type(obj).__name__}")
        spec = _spec_from_fields(obj)
        texts = {}
        for key in ("source", "reason", "updated_at"):
            value = obj.get(key, "")
            if not isinstance(value, str):
                raise PolicyError(f"{key} must be a string (got {value!r})")
            texts[key] = value
        if texts["updated_at"]:
            _check_rfc3339(texts["updated_at"])
        return cls(spec, **texts)

    @classmethod
    def from_json(cls, text: str | bytes) -> "RoutePolicy":
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise PolicyError(f"policy value is not valid JSON ({exc}): {shown!r}") from None
        return cls.from_dict(obj)


# --------------------------------------------------------------------------- a service's policy


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """Floors already applied, one dict lookup per request: the proxy's hot-path form."""

    table: Mapping[str, ModeSpec]
    fallback: ModeSpec  # routes with no entry and no floor of their own

    def mode_for(self, route: str) -> ModeSpec:
        return self.table.get(route, self.fallback)


@dataclass(frozen=True)
class ServicePolicy:
    """Everything stored for one service: route policies, floors, and the version.

    Lookups go route entry, then `*`, then the caller's default; the same for floors
    (a route's own floor replaces the `*` floor, so an operator can loosen one route).
    An entry that does not parse is kept in `invalid_*` and treated as STRONG: when
    in doubt, read from the primary.
    """

    service: str
    version: int = 0
    routes: Mapping[str, RoutePolicy] = field(default_factory=dict)
    floors: Mapping[str, ModeSpec] = field(default_factory=dict)
    invalid_routes: Mapping[str, str] = field(default_factory=dict)  # route -> why it did not parse
    invalid_floors: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_hashes(cls, service: str, policy_hash: Mapping[str, str],
                    floor_hash: Mapping[str, str] | None = None) -> "ServicePolicy":
        """Build from raw HGETALL results; never raises on bad entries (see invalid_*)."""
        routes, invalid_routes = {}, {}
        version = 0
        for route, raw in policy_hash.items():
            if route == VERSION_FIELD:
                try:
                    version = int(raw)
                except ValueError:
                    invalid_routes[VERSION_FIELD] = f"not an integer: {raw!r}"
                continue
            try:
                routes[route] = RoutePolicy.from_json(raw)
            except PolicyError as exc:
                invalid_routes[route] = str(exc)
        floors, invalid_floors = {}, {}
        for route, raw in (floor_hash or {}).items():
            try:
                floors[route] = ModeSpec.parse(raw)
            except PolicyError as exc:
                invalid_floors[route] = str(exc)
        return cls(service, version, routes, floors, invalid_routes, invalid_floors)

    @property
    def is_empty(self) -> bool:
        return not (self.version or self.routes or self.floors or self.invalid_routes or self.invalid_floors)

    def mode_for(self, route: str, default: ModeSpec | None = None) -> ModeSpec | None:
        """The stored mode for `route` (no floor applied): route entry, else `*`, else `default`."""
        for key in (route, DEFAULT_ROUTE):
            if key in self.routes:
                return self.routes[key].spec
            if key in self.invalid_routes:
                return STRONG
        return default

    def floor_for(self, route: str) -> ModeSpec | None:
        """The weakest mode allowed for `route`: its own floor, else the `*` floor, else none."""
        for key in (route, DEFAULT_ROUTE):
            if key in self.floors:
                return self.floors[key]
            if key in self.invalid_floors:
                return STRONG
        return None

    def effective_mode_for(self, route: str, default: ModeSpec) -> ModeSpec:
        """What a proxy serves `route` with: the stored mode raised to the route's floor."""
        return apply_floor(self.mode_for(route, default), self.floor_for(route))

    def compile(self, default: ModeSpec) -> CompiledPolicy:
        named = (set(self.routes) | set(self.invalid_routes) | set(self.floors) | set(self.invalid_floors))
        named.discard(DEFAULT_ROUTE)
        table = {route: self.effective_mode_for(route, default) for route in named}
        return CompiledPolicy(table, self.effective_mode_for(DEFAULT_ROUTE, default))

    def floors_only(self) -> "ServicePolicy":
        """This service's floors without its routes: what a proxy keeps when it falls back to its default."""
        return ServicePolicy(self.service, 0, {}, self.floors, {}, self.invalid_floors)
