"""The policies the DQN must beat, and the hindsight oracle that bounds what is possible.

  always_strong    every read on the primary (the safe default)
  always_eventual  every read on any healthy replica (floors still apply)
  lag_threshold    per route, BOUNDED(T) (a replica only while its lag <= T) or
                   STRONG, T tuned per scenario and route on tuning seeds (never
                   the evaluation seeds)
  lsn_ryw          READ_YOUR_WRITES on every route (PostgreSQL: WAL LSN tracking)
  oracle           per window, in hindsight: for each route in turn, tries every
                   allowed action on a snapshot of the simulator with the window's
                   actual traffic and lag, scores it by its expected reward (the
                   stale penalty averaged over the Poisson-distributed stale count:
                   it knows the conditions, not the coin flips), and keeps the one
                   with the highest summed reward (one coordinate pass, other routes
                   held). The chosen modes are then run and scored like any policy.
                   It sees the future window, so it is a bound, not a policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Callable, Mapping, Sequence

from clidash.policy import Mode, ModeSpec, apply_floor

from .actions import ACTIONS, mask_for_floor
from .reward import reward, stale_penalty
from .sim.env import SimEnv, WindowResult
from .sim.model import Scenario
from .sim.rollout import EpisodeStats, clamp_to_floors, floor_of, record_window, run_episode, score_window

# Candidate thresholds for the tuned lag-threshold heuristic (ms): the agent's own
# BOUNDED values, so heuristic, DQN and oracle choose from the same modes and the
# comparison is between decision rules, not between action sets. inf = EVENTUAL.
THRESHOLD_GRID_MS: tuple[float, ...] = (50, 250, 1000, float("inf"))
# Seeds used to tune heuristics; evaluation uses seeds 0..n-1 and training 10_000 and up.
TUNING_SEEDS: tuple[int, ...] = (500, 501, 502)
# Standard normal quantiles at (i + 0.5) / 16: the expected stale penalty of a
# large Poisson count is averaged over these points.
_NORMAL_POINTS = tuple(NormalDist().inv_cdf((i + 0.5) / 16) for i in range(16))


@dataclass
class StaticPolicy:
    """The same mode for the whole episode: one for every route, or one per route."""

    name: str
    spec: ModeSpec
    per_route: dict[str, ModeSpec] = field(default_factory=dict)

    def reset(self, env: SimEnv) -> None:
        pass

    def act(self, env: SimEnv, last: Mapping[str, WindowResult] | None) -> dict[str, ModeSpec]:
        return {r.name: self.per_route.get(r.name, self.spec) for r in env.scenario.routes}


def always_strong() -> StaticPolicy:
    return StaticPolicy("always_strong", ModeSpec(Mode.STRONG))


def always_eventual() -> StaticPolicy:
    return StaticPolicy("always_eventual", ModeSpec(Mode.EVENTUAL))


def lsn_ryw() -> StaticPolicy:
    return StaticPolicy("lsn_ryw", ModeSpec(Mode.READ_YOUR_WRITES))


def tuned_lag_threshold(make_scenario: Callable[[int], Scenario],
                        seeds: Sequence[int] = TUNING_SEEDS,
                        grid: Sequence[float] = THRESHOLD_GRID_MS, passes: int = 2) -> StaticPolicy:
    """Per route, "a replica only while its lag <= T" with T from `grid`, or never
    (STRONG), chosen by coordinate ascent on the mean reward over the tuning seeds:
    the best a careful operator could set by hand for this scenario."""
    options = [ModeSpec(Mode.STRONG)] + [ModeSpec(Mode.BOUNDED, float(t)) if t != float("inf")
                                         else ModeSpec(Mode.EVENTUAL) for t in grid]
    routes = make_scenario(seeds[0]).routes
    # Clamped to each route's floor as the proxy would, so the report shows what runs.
    route_options = {r.name: list(dict.fromkeys(apply_floor(o, floor_of(r)) for o in options)) for r in routes}
    chosen = {r.name: ModeSpec(Mode.STRONG) for r in routes}

    def score(table: dict[str, ModeSpec]) -> float:
        policy = StaticPolicy("lag_threshold", ModeSpec(Mode.STRONG), table)
        return sum(run_episode(make_scenario(s), s, policy).mean_reward for s in seeds) / len(seeds)

    best = score(chosen)
    for _ in range(passes):
        improved = False
        for name in route_options:
            for spec in route_options[name]:
                if spec == chosen[name]:
                    continue
                trial = {**chosen, name: spec}
                value = score(trial)
                if value > best:
                    chosen, best, improved = trial, value, True
        if not improved:
            break
    return StaticPolicy("lag_threshold", ModeSpec(Mode.STRONG), chosen)


def expected_stale_penalty(expected_stale: float, audited: float, budget: float) -> float:
    """E[stale_penalty(K)] for K ~ Poisson(expected_stale): exact sum for small means,
    an average over normal quantiles for large ones."""
    lam = max(0.0, float(expected_stale))
    if lam == 0.0 or not audited:
        return 0.0
    if lam > 40:
        sd = math.sqrt(lam)
        return sum(stale_penalty(max(0.0, lam + z * sd), audited, budget) for z in _NORMAL_POINTS) / len(_NORMAL_POINTS)
    total, p, k = 0.0, math.exp(-lam), 0
    mass = 0.0
    while mass < 0.9999 and k < 200:
        total += p * stale_penalty(k, audited, budget)
        mass += p
        k += 1
        p *= lam / k
    return total


def expected_score(scenario: Scenario, results: Mapping[str, WindowResult], modes: Mapping[str, ModeSpec],
                   prev: Mapping[str, ModeSpec] | None) -> float:
    """score_window for results run with expected_outcomes=True, with each route's stale
    term replaced by its expectation (the penalty is a step, so E[penalty] != penalty(E))."""
    total = 0.0
    for r in scenario.routes:
        res = results[r.name]
        before = prev.get(r.name) if prev else None
        value, terms = reward(res, modes[r.name], before, r.objective_ms, r.stale_budget)
        total += value - terms["stale"] - expected_stale_penalty(res.stale_reads, res.reads_replica, r.stale_budget)
    return total


def run_oracle(scenario: Scenario, seed: int) -> EpisodeStats:
    """The per-window hindsight oracle's episode (see the module docstring)."""
    env = SimEnv(scenario, seed)
    allowed = {r.name: [apply_floor(a, floor_of(r)) for a, ok in zip(ACTIONS, mask_for_floor(floor_of(r))) if ok]
               for r in scenario.routes}
    stats = EpisodeStats()
    modes = clamp_to_floors(scenario, {})
    prev: dict[str, ModeSpec] | None = None
    while not env.done:
        snap = env.snapshot()
        for route in scenario.routes:
            best_spec, best_score = modes[route.name], float("-inf")
            for spec in allowed[route.name]:
                trial = {**modes, route.name: spec}
                env.restore(snap)
                results, _ = env.step(trial, expected_outcomes=True)
                score = expected_score(scenario, results, trial, prev)
                if score > best_score:
                    best_spec, best_score = spec, score
            modes = {**modes, route.name: best_spec}
        env.restore(snap)
        results, _ = env.step(modes)
        record_window(stats, scenario, results, modes, prev)
        prev = dict(modes)
    return stats
