"""Pre-training in the simulator: the DQN as a simulator policy, and the training loop.

The agent decides through the same Controller (features -> agent -> guardrails)
as `clidash optimizer run`, so it learns inside the guardrails it will live with.
Episodes cycle through the scenarios with training seeds (TRAIN_SEED_BASE and up,
disjoint from evaluation seeds 0..n-1 and the heuristics' tuning seeds).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from clidash.policy import ModeSpec

from .actions import ACTIONS, mask_for_floor
from .agent import DQNAgent
from .config import DQNConfig
from .controller import Controller, RouteInput
from .guardrails import Guardrails
from .sim.env import SimEnv, WindowResult
from .sim.rollout import floor_of, run_episode
from .sim.scenarios import SCENARIOS
from .state import OBS_DIM, RouteState

TRAIN_SEED_BASE = 10_000


DEFAULT_TRAIN_WINDOWS = 600_000


def default_dqn_config(seed: int = 1, total_windows: int = DEFAULT_TRAIN_WINDOWS) -> DQNConfig:
    """The hyperparameters of the committed checkpoint. gamma 0.9: consequences of a
    mode change play out over a few windows, not hundreds. One update of 128 per 8
    transitions samples as much as 64 per 4 at about two thirds of the time."""
    return DQNConfig(obs_dim=OBS_DIM, seed=seed, hidden_sizes=(64, 64), gamma=0.9, lr=5e-4,
                     batch_size=128, buffer_size=100_000, learning_starts=2_000, train_frequency=8,
                     target_update_interval=250, epsilon_start=1.0, epsilon_end=0.02,
                     epsilon_decay_steps=max(1, int(total_windows * 0.7)))


def guardrails_for_sim() -> Guardrails:
    """The live defaults (optimizer/guardrails.py), one set per episode."""
    return Guardrails()


@dataclass
class DQNPolicy:
    """The agent as a simulator policy (rollout.Policy). Starts every route at STRONG,
    as a proxy without a policy does."""

    agent: DQNAgent
    learn: bool = False
    explore: bool = False
    name: str = "dqn"
    make_guardrails: Callable[[], Guardrails] = guardrails_for_sim
    controller: Controller | None = field(default=None, init=False)
    masks: dict[str, tuple[bool, ...]] = field(default_factory=dict, init=False)

    def reset(self, env: SimEnv) -> None:
        self.controller = Controller(self.agent, self.make_guardrails(), learn=self.learn, explore=self.explore)
        # Floors are fixed for an episode: build each route's mask once, not every window.
        self.masks = {r.name: tuple(mask_for_floor(floor_of(r))) for r in env.scenario.routes}

    def act(self, env: SimEnv, last: Mapping[str, WindowResult] | None) -> dict[str, ModeSpec]:
        assert self.controller is not None, "reset() first"
        if last is None:
            return {r.name: ACTIONS[0] for r in env.scenario.routes}
        inputs = [RouteInput(r.name, RouteState.from_window(last[r.name], env.scenario.window_s),
                             r.objective_ms, r.stale_budget, self.masks[r.name])
                  for r in env.scenario.routes]
        return {d.key: ACTIONS[d.applied] for d in self.controller.decide(inputs)}


# Model selection: every `validate_every` windows the greedy agent runs on these seeds
# (disjoint from training 10000+, tuning 500-502 and evaluation 0..n-1), and the
# weights with the best validation score are the ones kept.
VALIDATION_SEEDS: tuple[int, ...] = (600, 601)


@dataclass(frozen=True)
class TrainSettings:
    total_windows: int = DEFAULT_TRAIN_WINDOWS   # simulator windows over all episodes
    seed: int = 1
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    dqn: DQNConfig | None = None        # None: default_dqn_config(seed, total_windows)
    validate_every: int = 100_000       # windows; 0 = keep the final weights
    validation_seeds: tuple[int, ...] = VALIDATION_SEEDS


@dataclass
class EpisodeLog:
    episode: int
    scenario: str
    seed: int
    windows: int
    mean_reward: float
    epsilon: float
    updates: int
    seconds: float


class Validator:
    """Scores the greedy agent on the validation seeds: the mean over scenarios of the
    share of the always-STRONG -> oracle gap it closes (each clipped to [-1, 1] so one
    scenario cannot dominate). The references are computed once."""

    def __init__(self, scenarios: tuple[str, ...], seeds: tuple[int, ...]) -> None:
        from .baselines import always_strong, run_oracle
        self.cases = []
        for name in scenarios:
            for seed in seeds:
                strong = run_episode(SCENARIOS[name](seed), seed, always_strong()).mean_reward
                oracle = run_oracle(SCENARIOS[name](seed), seed).mean_reward
                self.cases.append((name, seed, strong, oracle))

    def score(self, agent: DQNAgent) -> float:
        shares = []
        for name, seed, strong, oracle in self.cases:
            got = run_episode(SCENARIOS[name](seed), seed, DQNPolicy(agent)).mean_reward
            gap = oracle - strong
            shares.append(max(-1.0, min(1.0, (got - strong) / gap)) if gap > 1e-9 else 0.0)
        return sum(shares) / len(shares)


def train(settings: TrainSettings, progress: Callable[[EpisodeLog], None] | None = None,
          on_validation: Callable[[int, float, bool], None] | None = None) -> DQNAgent:
    """Train, and return the agent with the weights that validated best (the last ones
    without validation). `on_validation(windows, score, is_best)` reports each check."""
    for name in settings.scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    config = settings.dqn or default_dqn_config(settings.seed, settings.total_windows)
    agent = DQNAgent(replace(config, seed=settings.seed))
    policy = DQNPolicy(agent, learn=True, explore=True)
    validator = Validator(settings.scenarios, settings.validation_seeds) if settings.validate_every else None
    best_score, best_weights, next_check = float("-inf"), None, settings.validate_every
    windows, episode, started = 0, 0, time.monotonic()

    validated_at = -1

    def validate() -> None:
        nonlocal best_score, best_weights, validated_at
        validated_at = windows
        score = validator.score(agent)
        is_best = score > best_score
        if is_best:
            best_score = score
            best_weights = (copy.deepcopy(agent.q_net.state_dict()), copy.deepcopy(agent.target_net.state_dict()))
        if on_validation:
            on_validation(windows, score, is_best)

    while windows < settings.total_windows:
        name = settings.scenarios[episode % len(settings.scenarios)]
        seed = TRAIN_SEED_BASE + episode
        scenario = SCENARIOS[name](seed)
        stats = run_episode(scenario, seed, policy)
        windows += len(stats.rewards)
        if progress:
            progress(EpisodeLog(episode, name, seed, len(stats.rewards), stats.mean_reward, agent.epsilon,
                                agent.updates, time.monotonic() - started))
        episode += 1
        if validator and windows >= next_check:
            validate()
            next_check += settings.validate_every
    if validator:
        if validated_at != windows:
            validate()                  # the final weights compete too
        q_state, target_state = best_weights
        agent.q_net.load_state_dict(q_state)
        agent.target_net.load_state_dict(target_state)
    return agent
