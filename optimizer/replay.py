"""Fixed-size ring buffer of transitions, stored as preallocated tensors.

It keeps the next state's action mask so the learning target can only bootstrap
from an action the agent would actually be allowed to take there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True, slots=True)
class Batch:
    obs: torch.Tensor         # [B, obs_dim] float32
    actions: torch.Tensor     # [B] int64
    rewards: torch.Tensor     # [B] float32
    next_obs: torch.Tensor    # [B, obs_dim] float32
    dones: torch.Tensor       # [B] float32 (1.0 = terminal, no bootstrap)
    next_masks: torch.Tensor  # [B, n_actions] bool (True = allowed)


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, n_actions: int, seed: int) -> None:
        self.capacity = capacity
        self.obs = torch.zeros((capacity, obs_dim), dtype=torch.float32)
        self.actions = torch.zeros(capacity, dtype=torch.int64)
        self.rewards = torch.zeros(capacity, dtype=torch.float32)
        self.next_obs = torch.zeros((capacity, obs_dim), dtype=torch.float32)
        self.dones = torch.zeros(capacity, dtype=torch.float32)
        self.next_masks = torch.ones((capacity, n_actions), dtype=torch.bool)
        self._pos = 0
        self._size = 0
        # Own generator: sampling is reproducible from the seed and does not
        # consume (or depend on) torch's global RNG.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self._size

    def add(self, obs: Sequence[float] | torch.Tensor, action: int, reward: float,
            next_obs: Sequence[float] | torch.Tensor, done: bool,
            next_mask: Sequence[bool] | torch.Tensor) -> None:
        i = self._pos
        self.obs[i] = torch.as_tensor(obs, dtype=torch.float32)
        self.actions[i] = int(action)
        self.rewards[i] = float(reward)
        self.next_obs[i] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.dones[i] = 1.0 if done else 0.0
        self.next_masks[i] = torch.as_tensor(next_mask, dtype=torch.bool)
        self._pos = (i + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self._size, (batch_size,), generator=self.generator)
        return Batch(self.obs[idx], self.actions[idx], self.rewards[idx],
                     self.next_obs[idx], self.dones[idx], self.next_masks[idx])
