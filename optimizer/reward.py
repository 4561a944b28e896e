"""Per-route, per-window reward for the agent.

    reward = offload + latency_gain
             - stale - latency_over - errors - overload - switch

  term           weight  definition
  offload        1.0     replica read share (reads_replica / reads)              [0, 1]
  latency_gain   0.5     (objective - route p99) / objective, when under it       [0, 0.5]
  stale          2.0 + 4.0 x excess   only when the AUDITED stale rate is over
                         budget; excess = (rate - budget) / budget, capped at 5.
                         The fixed 2.0 exceeds the best possible gain (1.5), so
                         any breach window is net negative.                       [0, 22]
  latency_over   2.0     (route p99 - objective) / objective, capped at 3         [0, 6]
  errors         10.0    errors / (reads + writes): 10% errors costs 1.0          [0, 10]
  overload       3.0     (utilisation - 0.8) / 0.2, capped at 2; only when the
                         primary's utilisation is known (simulator)               [0, 6]
  switch         0.1     when action != prev_action (damps flapping)              {0, 0.1}

The stale term reads only `stale_found / stale_audited` (the primary re-check
sample, DESIGN section 6), never a model estimate: the agent must not be able to
talk itself out of a penalty. With no audits in a window the term is 0.
"""
from __future__ import annotations

from typing import Any

from .state import RouteState, as_route_state

W_OFFLOAD = 1.0
W_LATENCY_GAIN = 0.5
W_STALE_BREACH = 2.0
W_STALE_EXCESS = 4.0
STALE_EXCESS_CAP = 5.0
W_LATENCY_OVER = 2.0
LATENCY_OVER_CAP = 3.0
W_ERRORS = 10.0
W_OVERLOAD = 3.0
OVERLOAD_KNEE = 0.8
OVERLOAD_CAP = 2.0
W_SWITCH = 0.1


def stale_penalty(stale_found: float, stale_audited: float, stale_budget: float) -> float:
    """The stale term's size (>= 0) for an audit of `stale_audited` reads that found `stale_found` stale."""
    if not stale_audited:
        return 0.0
    rate = stale_found / stale_audited
    if rate <= stale_budget:
        return 0.0
    excess = (rate - stale_budget) / stale_budget if stale_budget > 0 else STALE_EXCESS_CAP
    return W_STALE_BREACH + W_STALE_EXCESS * min(excess, STALE_EXCESS_CAP)


def reward(window: Any, action: int, prev_action: int | None, objective_ms: float,
           stale_budget: float) -> tuple[float, dict[str, float]]:
    """(total, terms). `window` is a RouteState, a sim WindowResult or a telemetry
    route dict (with `replicas`). Penalty terms are reported as negative numbers so
    that sum(terms.values()) == total."""
    s: RouteState = as_route_state(window)
    obj = max(objective_ms, 1e-9)
    p99 = s.route_p99_ms

    offload = W_OFFLOAD * s.replica_share
    latency_gain = W_LATENCY_GAIN * max(0.0, (obj - p99) / obj) if s.reads else 0.0
    latency_over = W_LATENCY_OVER * min(max(0.0, (p99 - obj) / obj), LATENCY_OVER_CAP)

    stale = stale_penalty(s.stale_found, s.stale_audited, stale_budget)

    errors = W_ERRORS * s.error_rate
    overload = 0.0
    if s.primary_utilisation is not None:
        overload = W_OVERLOAD * min(max(0.0, s.primary_utilisation - OVERLOAD_KNEE) / (1 - OVERLOAD_KNEE),
                                    OVERLOAD_CAP)
    switch = W_SWITCH if prev_action is not None and prev_action != action else 0.0

    terms = {"offload": offload, "latency_gain": latency_gain, "stale": -stale,
             "latency_over": -latency_over, "errors": -errors, "overload": -overload,
             "switch": -switch}
    return sum(terms.values()), terms
