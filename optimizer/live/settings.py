"""The live optimizer's configuration: one validated, frozen object.

Precedence (flags > CLIDASH_OPTIMIZER_RUN_* env > the `[optimizer]` table of
`--config FILE` > defaults) is the CLI's job; `build_settings` turns the merged
values into `OptimizerSettings` and rejects bad ones with a ConfigError that
names the setting.

Per-route settings are keyed `service/route` (split at the first `/`);
`service/*` covers every route of the service without its own entry, as `*`
does in the policy hash. On the command line they are `KEY=VALUE` items, in
TOML a table: `[optimizer.floors] "catalog/checkout" = "READ_YOUR_WRITES"`.
"""
from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from clidash.config import ConfigError, parse_host_port
from clidash.policy import DEFAULT_ROUTE, ModeSpec, PolicyError, stronger

from ..config import DEFAULT_CHECKPOINT

DEFAULT_METRICS_LISTEN = "127.0.0.1:9465"
DEFAULT_WINDOW_S = 10.0
DEFAULT_OBJECTIVE_MS = 50.0
DEFAULT_STALE_BUDGET = 0.01
DEFAULT_EPSILON = 0.02

RouteKey = tuple[str, str]          # (service, route); route may be `*`


def default_consumer() -> str:
    """hostname-pid: unique per process on a host, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class OptimizerSettings:
    redis_url: str
    checkpoint: Path = DEFAULT_CHECKPOINT
    window_s: float = DEFAULT_WINDOW_S
    settle_s: float = 2.0               # wait after a window ends for its last records and partials
    metrics_listen: tuple[str, int] | None = ("127.0.0.1", 9465)
    consumer: str = field(default_factory=default_consumer)
    objective_ms: float = DEFAULT_OBJECTIVE_MS
    stale_budget: float = DEFAULT_STALE_BUDGET
    route_objectives_ms: Mapping[RouteKey, float] = field(default_factory=dict)
    route_stale_budgets: Mapping[RouteKey, float] = field(default_factory=dict)
    floors: Mapping[RouteKey, ModeSpec] = field(default_factory=dict)
    learn: bool = True
    epsilon: float = DEFAULT_EPSILON
    dwell_windows: int = 3
    max_changes_per_window: int = 5
    stale_tripwire: float = 3.0
    freeze_windows: int = 10
    save_to: Path | None = None         # a directory; the agent is saved there as <consumer>.pt
    save_every_windows: int = 30
    max_routes_per_service: int = 200   # metrics label cap, as the proxy's

    # -- per-route lookups: the route's own entry, then `service/*`, then the default

    def objective_for(self, service: str, route: str) -> float:
        return _lookup(self.route_objectives_ms, service, route, self.objective_ms)

    def stale_budget_for(self, service: str, route: str) -> float:
        return _lookup(self.route_stale_budgets, service, route, self.stale_budget)

    def floor_for(self, service: str, route: str) -> ModeSpec | None:
        return _lookup(self.floors, service, route, None)

    def combined_floor(self, service: str, route: str, redis_floor: ModeSpec | None) -> ModeSpec | None:
        """The stronger of the operator's Redis floor and this config's floor."""
        mine = self.floor_for(service, route)
        if mine is None or redis_floor is None:
            return mine or redis_floor
        return stronger(mine, redis_floor)

    @property
    def save_path(self) -> Path | None:
        return None if self.save_to is None else self.save_to / f"{_safe_file_name(self.consumer)}.pt"

    @property
    def partial_ttl_ms(self) -> int:
        # Long enough for the owner to seal a window and for stragglers to see the seal.
        return int(max(5 * self.window_s + self.settle_s, 30.0) * 1000)

    @property
    def lease_ms(self) -> int:
        return int(3 * self.window_s * 1000)


def _lookup(table: Mapping[RouteKey, Any], service: str, route: str, default: Any) -> Any:
    for key in ((service, route), (service, DEFAULT_ROUTE)):
        if key in table:
            return table[key]
    return default


def _safe_file_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "optimizer"


# --------------------------------------------------------------------------- parsing helpers


def _number(setting: str, value: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, integer: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value) if integer and not isinstance(value, float) else float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{setting}: expected {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{setting}: must be finite, got {value!r}")
    if lo is not None and (number <= lo if lo_open else number < lo):
        raise ConfigError(f"{setting}: must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and number > hi:
        raise ConfigError(f"{setting}: must be <= {hi:g}, got {value!r}")
    return int(number) if integer else number


def _route_key(setting: str, text: str) -> RouteKey:
    service, sep, route = str(text).strip().partition("/")
    if not sep or not service or not route:
        raise ConfigError(f"{setting}: expected SERVICE/ROUTE (route `*` = every route), got {text!r}")
    return service, route


def parse_route_items(setting: str, items: Iterable[str] | Mapping[str, Any] | None) -> list[tuple[RouteKey, Any]]:
    """`SERVICE/ROUTE=VALUE` strings (flags, env) or a {"SERVICE/ROUTE": VALUE} table (TOML)."""
    if not items:
        return []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            key, sep, value = str(item).rpartition("=")
            if not sep:
                raise ConfigError(f"{setting}: expected SERVICE/ROUTE=VALUE, got {item!r}")
            pairs.append((key, value))
    return [(_route_key(setting, key), value) for key, value in pairs]


def _mode(setting: str, value: Any) -> ModeSpec:
    try:
        return ModeSpec.parse(str(value))
    except PolicyError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


# --------------------------------------------------------------------------- the builder


def build_settings(redis_url: str | None, *, checkpoint: str | Path | None = None,
                   window_s: Any = DEFAULT_WINDOW_S, settle_s: Any = None,
                   metrics_listen: str | None = DEFAULT_METRICS_LISTEN, consumer: str | None = None,
                   objective_ms: Any = DEFAULT_OBJECTIVE_MS, stale_budget: Any = DEFAULT_STALE_BUDGET,
                   route_objectives=None, route_stale_budgets=None, floors=None,
                   learn: bool = True, epsilon: Any = DEFAULT_EPSILON, dwell_windows: Any = 3,
                   max_changes_per_window: Any = 5, stale_tripwire: Any = 3.0, freeze_windows: Any = 10,
                   save_to: str | Path | None = None, save_every_windows: Any = 30,
                   max_routes_per_service: Any = 200) -> OptimizerSettings:
    """Validate everything; `metrics_listen` None or "off" turns the listener off;
    `settle_s` None means min(2 s, window / 2)."""
    if not redis_url:
        raise ConfigError("redis: a Redis URL is required (--redis or CLIDASH_OPTIMIZER_RUN_REDIS)")
    if not str(redis_url).startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis: expected a redis://, rediss:// or unix:// URL, got {redis_url!r}")
    window = _number("window", window_s, lo=0.1, hi=3600)
    settle = min(2.0, window / 2) if settle_s is None else _number("settle", settle_s, lo=0.0, hi=window)
    listen = None
    if metrics_listen is not None and str(metrics_listen).strip().lower() not in ("", "off", "none"):
        listen = parse_host_port(str(metrics_listen), "metrics_listen")
    name = default_consumer() if consumer is None else str(consumer).strip()
    if not name or any(ch in name for ch in " \r\n\0"):
        raise ConfigError(f"consumer: must be non-empty text without spaces, got {consumer!r}")

    objectives = {key: _number(f"route_objective {key[0]}/{key[1]}", v, lo=0.0, lo_open=True)
                  for key, v in parse_route_items("route_objective", route_objectives)}
    budgets = {key: _number(f"route_stale_budget {key[0]}/{key[1]}", v, lo=0.0, hi=1.0)
               for key, v in parse_route_items("route_stale_budget", route_stale_budgets)}
    floor_specs = {key: _mode(f"floor {key[0]}/{key[1]}", v) for key, v in parse_route_items("floor", floors)}

    ckpt = Path(checkpoint).expanduser() if checkpoint else DEFAULT_CHECKPOINT
    save_dir = Path(save_to).expanduser() if save_to else None
    settings = OptimizerSettings(
        redis_url=str(redis_url), checkpoint=ckpt, window_s=window, settle_s=settle, metrics_listen=listen,
        consumer=name,
        objective_ms=_number("objective_ms", objective_ms, lo=0.0, lo_open=True),
        stale_budget=_number("stale_budget", stale_budget, lo=0.0, hi=1.0),
        route_objectives_ms=objectives, route_stale_budgets=budgets, floors=floor_specs,
        learn=bool(learn), epsilon=_number("epsilon", epsilon, lo=0.0, hi=1.0),
        dwell_windows=_number("dwell_windows", dwell_windows, lo=0, integer=True),
        max_changes_per_window=_number("max_changes_per_window", max_changes_per_window, lo=1, integer=True),
        stale_tripwire=_number("stale_tripwire", stale_tripwire, lo=0.0, lo_open=True),
        freeze_windows=_number("freeze_windows", freeze_windows, lo=0, integer=True),
        save_to=save_dir,
        save_every_windows=_number("save_every_windows", save_every_windows, lo=1, integer=True),
        max_routes_per_service=_number("max_routes_per_service", max_routes_per_service, lo=1, integer=True))
    if save_dir is not None:
        if save_dir.exists() and not save_dir.is_dir():
            raise ConfigError(f"save_to: {save_dir} exists and is not a directory")
        # The committed checkpoints are artefacts of training; live learning never writes there.
        # (Saving over one's own --checkpoint is fine: that is how a learning run is resumed.)
        if settings.save_path.resolve().parent == DEFAULT_CHECKPOINT.parent.resolve():
            raise ConfigError(f"save_to: {save_dir} holds the committed checkpoints; choose another directory")
    return settings
