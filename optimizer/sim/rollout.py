"""Run one policy through one seeded scenario and score it the same way for every policy.

A policy sees what the proxies' telemetry would show after each window (the
WindowResults) and returns the mode per route for the next window. Every policy
is scored with the agent's own reward function (optimizer.reward) against each
route's objective and stale budget, and every mode is clamped to the route's
floor first, because the proxy enforces floors whatever the policy asks for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from clidash.policy import Mode, ModeSpec, apply_floor

from ..reward import reward
from .env import SimEnv, WindowResult
from .model import Route, Scenario

STRONG = ModeSpec(Mode.STRONG)


def floor_of(route: Route) -> ModeSpec | None:
    return ModeSpec.parse(route.floor) if route.floor else None


def protects_ryw(route: Route) -> bool:
    """Routes whose floor promises read-your-writes (READ_YOUR_WRITES or STRONG)."""
    f = floor_of(route)
    return f is not None and f.mode <= Mode.READ_YOUR_WRITES


class Policy(Protocol):
    name: str

    def reset(self, env: SimEnv) -> None: ...

    def act(self, env: SimEnv, last: Mapping[str, WindowResult] | None) -> dict[str, ModeSpec]:
        """Modes for the next window; `last` is None before the first window."""


@dataclass
class EpisodeStats:
    """Totals of one episode. `rewards` is per window, summed over routes."""

    rewards: list[float] = field(default_factory=list)
    reads: int = 0
    primary_reads: int = 0
    stale_reads: int = 0
    ryw_violations: int = 0           # all routes
    ryw_violations_protected: int = 0  # routes whose floor is READ_YOUR_WRITES or STRONG
    errors: int = 0
    changes: int = 0
    route_p99s: list[float] = field(default_factory=list)

    @property
    def mean_reward(self) -> float:
        return sum(self.rewards) / len(self.rewards) if self.rewards else 0.0

    @property
    def stale_rate(self) -> float:
        return self.stale_reads / self.reads if self.reads else 0.0

    @property
    def primary_read_share(self) -> float:
        return self.primary_reads / self.reads if self.reads else 0.0

    @property
    def p99_ms(self) -> float:
        """99th percentile over route-windows of each route's window p99."""
        xs = sorted(self.route_p99s)
        return xs[min(len(xs) - 1, math.ceil(0.99 * len(xs)) - 1)] if xs else 0.0


def clamp_to_floors(scenario: Scenario, modes: Mapping[str, ModeSpec]) -> dict[str, ModeSpec]:
    return {r.name: apply_floor(modes.get(r.name, STRONG), floor_of(r)) for r in scenario.routes}


def score_window(scenario: Scenario, results: Mapping[str, WindowResult], modes: Mapping[str, ModeSpec],
                 prev: Mapping[str, ModeSpec] | None) -> float:
    """Summed reward of one window. Modes are compared for the switch term, so any
    ModeSpec (also a threshold outside the agent's actions) can be scored."""
    total = 0.0
    for r in scenario.routes:
        before = prev.get(r.name) if prev else None
        total += reward(results[r.name], modes[r.name], before, r.objective_ms, r.stale_budget)[0]
    return total


def record_window(stats: EpisodeStats, scenario: Scenario, results: Mapping[str, WindowResult],
                  modes: Mapping[str, ModeSpec], prev: Mapping[str, ModeSpec] | None) -> None:
    stats.rewards.append(score_window(scenario, results, modes, prev))
    for r in scenario.routes:
        res = results[r.name]
        stats.reads += res.reads
        stats.primary_reads += res.reads_primary
        stats.stale_reads += res.stale_reads
        stats.ryw_violations += res.ryw_violations
        if protects_ryw(r):
            stats.ryw_violations_protected += res.ryw_violations
        stats.errors += res.errors
        if prev is not None and prev.get(r.name) != modes[r.name]:
            stats.changes += 1
        if res.reads or res.writes:
            stats.route_p99s.append(res.route_p99_ms)


def run_episode(scenario: Scenario, seed: int, policy: Policy) -> EpisodeStats:
    env = SimEnv(scenario, seed)
    policy.reset(env)
    stats = EpisodeStats()
    last: dict[str, WindowResult] | None = None
    prev: dict[str, ModeSpec] | None = None
    while not env.done:
        modes = clamp_to_floors(scenario, policy.act(env, last))
        last, _ = env.step(modes)
        record_window(stats, scenario, last, modes, prev)
        prev = modes
    return stats
