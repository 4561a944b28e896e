"""One decision per route per window: features -> agent proposal -> guardrails.

Shared by the simulator's training/evaluation loops and by `clidash optimizer run`,
so the live optimizer decides exactly as it was trained and evaluated.

For each route, at the end of window w (whose outcome is `state`):
  1. the reward of window w is computed for the action that was in force;
  2. the observation of window w is built (features include the current action,
     windows since the last change and the floor mask);
  3. when learning, (obs_{w-1}, action, reward_w, obs_w) is stored and the agent
     trains on its schedule; a route frozen by the stale tripwire is not learned from;
  4. the agent proposes an action inside the mask (epsilon-greedy when exploring);
  5. the guardrails turn the proposal into the action applied for window w+1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

from .actions import ACTIONS, N_ACTIONS
from .agent import DQNAgent
from .guardrails import Event, Guardrails
from .reward import reward as route_reward
from .state import RouteState, features, stale_relative


@dataclass(frozen=True, slots=True)
class RouteInput:
    """What the controller needs to know about one route at a window's end."""

    key: Hashable                       # (service, route) live; the route name in the simulator
    state: RouteState                   # the window that just ended
    objective_ms: float
    stale_budget: float
    mask: Sequence[bool] = (True,) * N_ACTIONS
    current_action: int | None = None   # the action in force per the policy store; None: the controller's own


@dataclass(frozen=True, slots=True)
class Decision:
    key: Hashable
    current: int                        # action in force during the window just ended
    proposed: int                       # the agent's choice
    applied: int                        # after the guardrails
    q_values: tuple[float, ...]         # masked actions are -inf
    reward: float                       # of the window just ended
    reward_terms: dict
    events: tuple[Event, ...]           # guardrail firings
    explored: bool

    @property
    def changed(self) -> bool:
        return self.applied != self.current

    @property
    def reason(self) -> str:
        """One line for the decisions log: why `applied` was chosen."""
        if self.events:
            return "; ".join(f"guardrail {kind}: {detail}" for kind, _, detail in self.events)
        if self.explored:
            return f"exploring: {ACTIONS[self.applied]}"
        q = self.q_values[self.applied]
        return f"dqn: {ACTIONS[self.applied]} has the highest Q among allowed actions ({q:.3f})"


@dataclass(slots=True)
class _Memory:
    action: int = 0                     # STRONG until told otherwise: the safe assumption
    since_change: int = 0
    prev_state: RouteState | None = None
    obs: list[float] | None = None
    taken: int | None = None
    prev_taken: int | None = None
    stale_seen: tuple[float, int] | None = None   # (stale_rel, action) of the latest audited window
    explore_target: int | None = None             # the action an exploration run keeps proposing
    explore_left: int = 0                         # windows left in that run


@dataclass
class Controller:
    agent: DQNAgent
    guardrails: Guardrails = field(default_factory=Guardrails)
    learn: bool = False
    explore: bool = False
    epsilon: float | None = None        # fixed exploration rate (live); None: the agent's schedule
    explore_hold_max: int = 20          # an exploration run lasts 1..this many windows
    switch_margin: float = 0.05         # leave the current action only for a Q this much higher
    train_updates: int = 0
    _memory: dict = field(default_factory=dict)

    def forget(self, key: Hashable) -> None:
        self._memory.pop(key, None)

    def decide(self, inputs: Sequence[RouteInput]) -> list[Decision]:
        """Decide every route of one window (one batched forward pass), then close the window."""
        prepared = []
        for item in inputs:
            mem = self._memory.setdefault(item.key, _Memory())
            current = mem.action if item.current_action is None else item.current_action
            if current != mem.action:           # changed behind our back (operator, restart)
                mem.action, mem.since_change = current, 0
            if mem.taken is None:
                mem.taken = current
            total, terms = route_reward(item.state, mem.taken, mem.prev_taken, item.objective_ms,
                                        item.stale_budget)
            if item.state.stale_audited:
                mem.stale_seen = (stale_relative(item.state, item.stale_budget), mem.taken)
            obs = features(item.state, objective_ms=item.objective_ms, stale_budget=item.stale_budget,
                           current_action=current, windows_since_change=mem.since_change,
                           mask=item.mask, prev=mem.prev_state, stale_seen=mem.stale_seen)
            if self.learn and mem.obs is not None and not self.guardrails.is_frozen(item.key):
                self.agent.observe(mem.obs, mem.taken, total, obs, False, item.mask)
                if self.agent.train_due():
                    self.agent.train_step()
                    self.train_updates += 1
            prepared.append((item, mem, current, obs, total, terms))

        q_all = self._q_batch([p[3] for p in prepared])
        decisions = []
        for (item, mem, current, obs, total, terms), q in zip(prepared, q_all):
            allowed = [i for i, ok in enumerate(item.mask) if ok] or [0]
            proposed, explored = self._explore(mem, allowed)
            if proposed is None:
                proposed = self._greedy(q, allowed, current)
            stale = item.state.stale_rate if item.state.stale_audited else None
            applied, events = self.guardrails.decide(item.key, proposed, current, item.mask, stale,
                                                     item.stale_budget)
            mem.prev_taken, mem.taken = mem.taken, applied
            mem.obs, mem.prev_state = obs, item.state
            if applied != current:
                mem.action, mem.since_change = applied, 0
            else:
                mem.since_change += 1
            masked_q = tuple(q[i] if item.mask[i] else float("-inf") for i in range(N_ACTIONS))
            decisions.append(Decision(item.key, current, proposed, applied, masked_q, total, terms,
                                      tuple(events), explored))
        self.guardrails.end_window()
        return decisions

    def _greedy(self, q: list[float], allowed: list[int], current: int) -> int:
        """argmax Q over allowed actions, with hysteresis: Q estimates of neighbouring
        modes are close and noisy, and flapping between them costs more than either."""
        best = max(allowed, key=lambda i: q[i])
        if current in allowed and q[best] - q[current] < self.switch_margin:
            return current
        return best

    def _explore(self, mem: _Memory, allowed: list[int]) -> tuple[int | None, bool]:
        """Temporally extended epsilon-greedy ("ez-greedy"): an exploration run proposes
        one random allowed action for a random number of windows. One-window random
        proposals would rarely reach the weak modes, since the guardrails tighten at
        once but relax one step per dwell; a held target gets there and stays long
        enough to show its consequences."""
        if not self.explore:
            return None, False
        if mem.explore_left > 0 and mem.explore_target in allowed:
            mem.explore_left -= 1
            return mem.explore_target, True
        eps = self.agent.epsilon if self.epsilon is None else self.epsilon
        if self.agent.rng.random() < eps:
            mem.explore_target = self.agent.rng.choice(allowed)
            mem.explore_left = self.agent.rng.randint(1, max(1, self.explore_hold_max)) - 1
            return mem.explore_target, True
        mem.explore_left = 0
        return None, False

    def _q_batch(self, obs: list[list[float]]) -> list[list[float]]:
        if not obs:
            return []
        with torch.no_grad():
            q = self.agent.q_net(torch.tensor(obs, dtype=torch.float32))
        return q.tolist()
