"""All of the DQN's knobs in one place, CleanRL-style; saved alongside checkpoints."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .actions import N_ACTIONS

# The committed checkpoint (optimizer/checkpoints/README.md says how it was trained).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "default.pt"


@dataclass(frozen=True, kw_only=True)
class DQNConfig:
    obs_dim: int                      # required: it depends on the feature encoder
    n_actions: int = N_ACTIONS
    seed: int = 1
    hidden_sizes: tuple[int, ...] = (64, 64)

    gamma: float = 0.99
    lr: float = 2.5e-4
    batch_size: int = 64
    buffer_size: int = 50_000
    learning_starts: int = 1_000      # env steps collected before the first update
    train_frequency: int = 1          # env steps per gradient update
    max_grad_norm: float = 10.0

    target_update_interval: int = 500  # gradient updates between target updates
    tau: float = 1.0                   # 1.0 = hard copy; < 1 = Polyak averaging

    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 10_000  # env steps over which epsilon falls linearly

    def __post_init__(self) -> None:
        # Tuples survive torch.load(weights_only=True); a list from JSON/CLI is normalised.
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.obs_dim <= 0 or self.n_actions <= 0:
            raise ValueError("obs_dim and n_actions must be positive")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.batch_size > self.buffer_size:
            raise ValueError("batch_size cannot exceed buffer_size")

    def epsilon(self, step: int) -> float:
        """Linear decay from epsilon_start to epsilon_end, then flat."""
        if self.epsilon_decay_steps <= 0:
            return self.epsilon_end
        frac = min(1.0, step / self.epsilon_decay_steps)
        return self.epsilon_start + frac * (self.epsilon_end - self.epsilon_start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DQNConfig":
        return cls(**data)
