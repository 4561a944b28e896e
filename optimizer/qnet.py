"""Dueling Q-network: a shared MLP trunk feeding a state-value head and an
advantage head, recombined as Q = V + A - mean(A)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class DuelingQNetwork(nn.Module):
    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.value = nn.Linear(width, 1)
        self.advantage = nn.Linear(width, n_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = self.trunk(obs)
        adv = self.advantage(z)
        # Subtracting the mean makes V and A identifiable (otherwise a constant can
        # move freely between them). The mean is over all actions, not just allowed
        # ones: masks differ per state and the network does not see them.
        return self.value(z) + adv - adv.mean(dim=-1, keepdim=True)
