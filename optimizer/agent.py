"""Masked double-DQN agent: acting, storing transitions, one train step, checkpoints.

Masks come from each route's floor (actions.mask_for_floor): a disallowed action is
never chosen, explored, or used as a bootstrap target.
"""
from __future__ import annotations

import contextlib
import copy
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .config import DQNConfig
from .qnet import DuelingQNetwork
from .replay import Batch, ReplayBuffer

MaskLike = Sequence[bool] | torch.Tensor
ObsLike = Sequence[float] | torch.Tensor


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    # Multi-threaded CPU reductions may sum in a different order between runs;
    # one thread makes same-seed training bit-for-bit repeatable.
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def _as_mask(mask: MaskLike | None, n_actions: int) -> torch.Tensor:
    if mask is None:
        return torch.ones(n_actions, dtype=torch.bool)
    m = torch.as_tensor(mask, dtype=torch.bool)
    if m.shape != (n_actions,):
        raise ValueError(f"mask must have {n_actions} entries, got shape {tuple(m.shape)}")
    if not bool(m.any()):
        raise ValueError("mask allows no action")
    return m


def double_dqn_target(online: nn.Module, target: nn.Module, batch: Batch, gamma: float) -> torch.Tensor:
    """r + gamma * Q_target(s', argmax_{a allowed in s'} Q_online(s', a)) for non-terminal s'.

    The online net chooses and the target net evaluates (double DQN), which curbs
    the overestimation of a plain max. Disallowed next actions are excluded from
    the choice. If a terminal transition's mask is all False, argmax falls on index 0
    but the value is multiplied by zero, so nothing non-finite leaks in.
    """
    with torch.no_grad():
        next_online = online(batch.next_obs).masked_fill(~batch.next_masks, float("-inf"))
        next_actions = next_online.argmax(dim=1, keepdim=True)
        next_values = target(batch.next_obs).gather(1, next_actions).squeeze(1)
        return batch.rewards + gamma * (1.0 - batch.dones) * next_values


class DQNAgent:
    def __init__(self, config: DQNConfig) -> None:
        self.config = config
        # Seed network init without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.q_net = DuelingQNetwork(config.obs_dim, config.n_actions, config.hidden_sizes)
        self.target_net = copy.deepcopy(self.q_net)
        self.target_net.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=config.lr)
        self.replay = ReplayBuffer(config.buffer_size, config.obs_dim, config.n_actions, config.seed)
        self.rng = random.Random(config.seed)   # exploration only
        self.steps = 0      # transitions observed (drives epsilon and the train schedule)
        self.updates = 0    # gradient steps taken (drives target updates)

    # ------------------------------------------------------------------ acting

    @property
    def epsilon(self) -> float:
        return self.config.epsilon(self.steps)

    def _masked_q(self, obs: ObsLike, mask: MaskLike | None) -> torch.Tensor:
        m = _as_mask(mask, self.config.n_actions)
        with torch.no_grad():
            q = self.q_net(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).squeeze(0)
        return q.masked_fill(~m, float("-inf"))

    def q_values(self, obs: ObsLike, mask: MaskLike | None = None) -> list[float]:
        """Q for every action; disallowed ones are -inf."""
        return self._masked_q(obs, mask).tolist()

    def act(self, obs: ObsLike, mask: MaskLike | None = None, explore: bool = True) -> int:
        """Epsilon-greedy over the allowed actions only (greedy when explore=False)."""
        if explore and self.rng.random() < self.epsilon:
            m = _as_mask(mask, self.config.n_actions)
            allowed = [i for i, ok in enumerate(m.tolist()) if ok]
            return self.rng.choice(allowed)
        return int(self._masked_q(obs, mask).argmax().item())

    # ------------------------------------------------------------------ learning

    def observe(self, obs: ObsLike, action: int, reward: float, next_obs: ObsLike,
                done: bool, next_mask: MaskLike | None = None) -> None:
        """Store one transition; `next_mask` is the mask in force at next_obs."""
        n = self.config.n_actions
        if not 0 <= int(action) < n:
            raise ValueError(f"action {action} out of range 0..{n - 1}")
        # A terminal state's mask is never used, so an empty one is tolerated there.
        nm = torch.ones(n, dtype=torch.bool) if next_mask is None else torch.as_tensor(next_mask, dtype=torch.bool)
        if nm.shape != (n,):
            raise ValueError(f"next_mask must have {n} entries, got shape {tuple(nm.shape)}")
        if not done and not bool(nm.any()):
            raise ValueError("next_mask allows no action in a non-terminal state")
        self.replay.add(obs, action, reward, next_obs, done, nm)
        self.steps += 1

    def train_due(self) -> bool:
        """Whether the CleanRL schedule calls for an update after the latest observe()."""
        c = self.config
        return (self.steps > c.learning_starts and self.steps % c.train_frequency == 0
                and len(self.replay) >= c.batch_size)

    def train_step(self) -> dict[str, float]:
        """One gradient update on a sampled batch; returns loss and mean Q of the taken actions."""
        c = self.config
        with _single_thread():
            batch = self.replay.sample(c.batch_size)
            targets = double_dqn_target(self.q_net, self.target_net, batch, c.gamma)
            q_taken = self.q_net(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            loss = F.smooth_l1_loss(q_taken, targets)   # Huber: robust to reward spikes
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.q_net.parameters(), c.max_grad_norm)
            self.optimizer.step()
            self.updates += 1
            if self.updates % c.target_update_interval == 0:
                self._update_target()
        return {"loss": float(loss.item()), "q_mean": float(q_taken.mean().item())}

    def _update_target(self) -> None:
        tau = self.config.tau
        with torch.no_grad():
            for t, o in zip(self.target_net.parameters(), self.q_net.parameters()):
                if tau == 1.0:
                    t.copy_(o)
                else:
                    t.lerp_(o, tau)

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | Path) -> None:
        """Networks, optimizer, counters and RNG states. The replay contents are not
        saved (too large, and a resumed run refills them); its sampler state is."""
        torch.save({
            "config": self.config.to_dict(),
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "updates": self.updates,
            "rng_state": self.rng.getstate(),
            "replay_rng_state": self.replay.generator.get_state(),
        }, path)

    @classmethod
    def load(cls, path: str | Path) -> "DQNAgent":
        # weights_only: a checkpoint is data, never code to execute.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        agent = cls(DQNConfig.from_dict(ckpt["config"]))
        agent.q_net.load_state_dict(ckpt["q_net"])
        agent.target_net.load_state_dict(ckpt["target_net"])
        agent.optimizer.load_state_dict(ckpt["optimizer"])
        agent.steps = int(ckpt["steps"])
        agent.updates = int(ckpt["updates"])
        agent.rng.setstate(_to_tuple(ckpt["rng_state"]))
        agent.replay.generator.set_state(ckpt["replay_rng_state"])
        return agent


def _to_tuple(state):
    # random.Random.setstate insists on tuples; be tolerant if a list comes back.
    return tuple(_to_tuple(x) for x in state) if isinstance(state, (list, tuple)) else state
