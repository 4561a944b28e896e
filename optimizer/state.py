"""One route's observation for the agent, built from a telemetry window.

Sources: a route entry of a telemetry record (DESIGN section 6) plus that record's
`replicas` list (`RouteState.from_record`), or a simulator `WindowResult`
(`RouteState.from_window`). Both become the same `RouteState`, and `features()`
turns it into a fixed-length vector of `OBS_DIM` floats:

  idx    feature                  definition (clipped to the range shown)
  0      read_rate                log1p(reads/s) / log1p(1e5)                  [0, 1]
  1      write_rate               log1p(writes/s) / log1p(1e4)                 [0, 1]
  2      read_share               reads / (reads + writes)                     [0, 1]
  3      ryw_share                ryw_exposed_reads / reads                    [0, 1]
  4      lag_level                log1p(max healthy replica lag ms) / log1p(1e4) [0, 1]
  5      lag_trend                lag_level - previous window's lag_level      [-1, 1]
  6-8    replicas_within_50/250/1000  share of ALL replicas that are healthy
                                  and lag <= 50 / 250 / 1000 ms                [0, 1]
  9      primary_p99_rel          primary read p99 / latency objective         [0, 4]
  10     replica_p99_rel          replica read p99 / latency objective         [0, 4]
  11     error_rate               errors / (reads + writes)                    [0, 1]
  12     stale_rel                (stale_found / stale_audited) / stale budget [0, 4]
  13-18  action one-hot           current action over ACTIONS (strength order) {0, 1}
  19     since_change             min(windows since last change, 30) / 30      [0, 1]
  20-25  allowed mask             1 where the floor allows the action          {0, 1}
  26     stale_budget_level       (log10(max(budget, 1e-4)) + 4) / 4: how much
                                  staleness the route tolerates                [0, 1]
  27     stale_rel_seen           stale_rel of the latest window that had audits
                                  (remembered while the route is on STRONG, where
                                  nothing is audited); 0 before any audit       [0, 4]
  28     stale_seen_action        the action index in force then / 5           [0, 1]

Log scales keep a 10 rps route and a 10k rps route in the same numeric range;
ratios are capped at 4 because beyond "4x over" the agent needs no finer detail.
p99s come from the histogram buckets (interpolated quantile, Prometheus style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from clidash.policy import ModeSpec, is_weaker

from .actions import ACTIONS, N_ACTIONS

LAG_THRESHOLDS_MS = (50.0, 250.0, 1000.0)
RATIO_CAP = 4.0
SINCE_CHANGE_CAP = 30
OBS_DIM = 13 + N_ACTIONS + 1 + N_ACTIONS + 3

_LOG_READ = math.log1p(1e5)
_LOG_WRITE = math.log1p(1e4)
_LOG_LAG = math.log1p(1e4)


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def hist_quantile(bounds_s: Sequence[float], counts: Sequence[float], q: float = 0.99) -> float:
    """Quantile in milliseconds from non-cumulative bucket counts.

    `counts` has one entry per upper bound in `bounds_s` plus a trailing +Inf bucket.
    Linear interpolation inside the bucket (lower edge = previous bound, 0 for the
    first); a quantile in the +Inf bucket returns the last finite bound, as
    Prometheus' histogram_quantile does. Empty histogram -> 0.0."""
    total = float(sum(counts))
    if total <= 0 or not bounds_s:
        return 0.0
    rank = q * total
    cum = 0.0
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if cum + c >= rank:
            if i >= len(bounds_s):
                return bounds_s[-1] * 1000.0
            lower = bounds_s[i - 1] if i > 0 else 0.0
            upper = bounds_s[i]
            return (lower + (upper - lower) * (rank - cum) / c) * 1000.0
        cum += c
    return bounds_s[-1] * 1000.0


def _sum_hists(*hists: Sequence[float] | None) -> list[float]:
    hs = [h for h in hists if h]
    if not hs:
        return []
    out = [0.0] * max(len(h) for h in hs)
    for h in hs:
        for i, c in enumerate(h):
            out[i] += c
    return out


def action_for_mode(mode: str | ModeSpec | None) -> int:
    """Index of the action a route currently runs. A spec outside ACTIONS (e.g. a
    human's BOUNDED:100) maps to the weakest action that is still at least as
    strong, so the agent never believes the route is weaker than it is."""
    if mode is None:
        return 0
    spec = mode if isinstance(mode, ModeSpec) else ModeSpec.parse(str(mode))
    best = 0
    for i, a in enumerate(ACTIONS):
        if not is_weaker(a, spec):
            best = i
    return best


@dataclass(slots=True)
class RouteState:
    route: str
    mode: str = "STRONG"
    window_s: float = 1.0
    reads_primary: int = 0
    reads_replica: int = 0
    writes: int = 0
    errors: int = 0
    ryw_exposed_reads: int = 0
    stale_audited: int = 0
    stale_found: int = 0
    primary_p99_ms: float = 0.0
    replica_p99_ms: float = 0.0
    route_p99_ms: float = 0.0                      # all reads of the route together
    replica_lags_ms: tuple[float | None, ...] = field(default_factory=tuple)  # None = unhealthy
    primary_utilisation: float | None = None       # unknown in proxy telemetry

    @property
    def reads(self) -> int:
        return self.reads_primary + self.reads_replica

    @property
    def replica_share(self) -> float:
        return self.reads_replica / self.reads if self.reads else 0.0

    @property
    def stale_rate(self) -> float:
        """Audited stale rate: ground truth from the primary re-check, never a model."""
        return self.stale_found / self.stale_audited if self.stale_audited else 0.0

    @property
    def error_rate(self) -> float:
        ops = self.reads + self.writes
        return self.errors / ops if ops else 0.0

    @property
    def max_lag_ms(self) -> float:
        return max((lag for lag in self.replica_lags_ms if lag is not None), default=0.0)

    @classmethod
    def from_record(cls, route: Mapping[str, Any], replicas: Sequence[Mapping[str, Any]] = (),
                    window_s: float = 1.0) -> "RouteState":
        bounds = route.get("latency_buckets_s") or []
        rp, rr = route.get("read_primary_hist"), route.get("read_replica_hist")
        # A replica whose lag is not measured yet (null) is not known to be fresh: it
        # counts like an unhealthy one (within no bound, not in the max).
        lags = tuple(float(r["lag_ms_max"]) if r.get("healthy", True) and r.get("lag_ms_max") is not None
                     else None for r in replicas)
        return cls(
            route=str(route.get("route", "*")), mode=str(route.get("mode", "STRONG")),
            window_s=float(window_s) or 1.0,
            reads_primary=int(route.get("reads_primary", 0)),
            reads_replica=int(route.get("reads_replica", 0)),
            writes=int(route.get("writes", 0)), errors=int(route.get("errors", 0)),
            ryw_exposed_reads=int(route.get("ryw_exposed_reads", 0)),
            stale_audited=int(route.get("stale_audited", 0)),
            stale_found=int(route.get("stale_found", 0)),
            primary_p99_ms=hist_quantile(bounds, rp or []),
            replica_p99_ms=hist_quantile(bounds, rr or []),
            route_p99_ms=hist_quantile(bounds, _sum_hists(rp, rr)),
            replica_lags_ms=lags)

    @classmethod
    def from_window(cls, res: Any, window_s: float = 1.0) -> "RouteState":
        """From a simulator WindowResult. The simulator knows every replica read's
        staleness, so it acts as a full audit (audited = replica reads, including
        own-write reads whose RYW violations also count as stale)."""
        healthy = int(res.healthy_replicas)
        return cls(
            route=res.route, mode=res.mode, window_s=window_s,
            reads_primary=res.reads_primary, reads_replica=res.reads_replica,
            writes=res.writes, errors=res.errors, ryw_exposed_reads=res.ryw_exposed_reads,
            stale_audited=res.reads_replica,
            stale_found=res.stale_reads,   # own-write (RYW) violations are already in stale_reads
            primary_p99_ms=res.primary_p99_ms, replica_p99_ms=res.replica_p99_ms,
            route_p99_ms=res.route_p99_ms,
            # Only the max lag is known: assume every healthy replica sits at it (pessimistic).
            replica_lags_ms=tuple([float(res.replica_lag_ms)] * healthy),
            primary_utilisation=res.primary_utilisation)


def as_route_state(window: Any, window_s: float = 1.0) -> RouteState:
    if isinstance(window, RouteState):
        return window
    if isinstance(window, Mapping):
        return RouteState.from_record(window, window.get("replicas", ()), window.get("window_s", window_s))
    return RouteState.from_window(window, window_s)


def lag_level(state: RouteState) -> float:
    return _clip(math.log1p(state.max_lag_ms) / _LOG_LAG, 0.0, 1.0)


def stale_relative(state: RouteState, stale_budget: float) -> float:
    """Audited stale rate / budget; a zero budget makes any stale read "maximally over"."""
    if stale_budget > 0:
        return state.stale_rate / stale_budget
    return RATIO_CAP if state.stale_found else 0.0


def features(state: RouteState, *, objective_ms: float, stale_budget: float,
             current_action: int | None = None, windows_since_change: int = 0,
             mask: Sequence[bool] | None = None, prev: RouteState | None = None,
             stale_seen: tuple[float, int] | None = None) -> list[float]:
    """The observation vector (see the module docstring for the layout).
    `current_action` defaults to the route's reported mode; `mask` to all allowed;
    `prev` (the previous window) gives the lag trend, 0 without it; `stale_seen` is
    (stale_rel, action) of the latest audited window, None when there was none."""
    w = state.window_s or 1.0
    reads, ops = state.reads, state.reads + state.writes
    obj = max(objective_ms, 1e-9)
    lvl = lag_level(state)
    trend = _clip(lvl - lag_level(prev), -1.0, 1.0) if prev is not None else 0.0
    n_rep = len(state.replica_lags_ms)
    within = [sum(1 for lag in state.replica_lags_ms if lag is not None and lag <= t) / n_rep if n_rep else 0.0
              for t in LAG_THRESHOLDS_MS]
    stale_rel = stale_relative(state, stale_budget)
    act = action_for_mode(state.mode) if current_action is None else current_action
    if mask is None:
        mask = [True] * N_ACTIONS
    if len(mask) != N_ACTIONS:
        raise ValueError(f"mask needs {N_ACTIONS} entries, got {len(mask)}")
    vec = [
        _clip(math.log1p(reads / w) / _LOG_READ, 0.0, 1.0),
        _clip(math.log1p(state.writes / w) / _LOG_WRITE, 0.0, 1.0),
        reads / ops if ops else 0.0,
        _clip(state.ryw_exposed_reads / reads, 0.0, 1.0) if reads else 0.0,
        lvl,
        trend,
        *within,
        _clip(state.primary_p99_ms / obj, 0.0, RATIO_CAP),
        _clip(state.replica_p99_ms / obj, 0.0, RATIO_CAP),
        _clip(state.error_rate, 0.0, 1.0),
        _clip(stale_rel, 0.0, RATIO_CAP),
        *[1.0 if i == act else 0.0 for i in range(N_ACTIONS)],
        min(max(windows_since_change, 0), SINCE_CHANGE_CAP) / SINCE_CHANGE_CAP,
        *[1.0 if m else 0.0 for m in mask],
        _clip((math.log10(max(stale_budget, 1e-4)) + 4.0) / 4.0, 0.0, 1.0),
        _clip(stale_seen[0], 0.0, RATIO_CAP) if stale_seen else 0.0,
        stale_seen[1] / (N_ACTIONS - 1) if stale_seen else 0.0,
    ]
    assert len(vec) == OBS_DIM
    return vec
