"""The DQN core on toy problems with known answers: learning, determinism, masks,
checkpoints. Small networks and under a thousand steps keep this to seconds on CPU."""
from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from clidash.optimizer.actions import ACTIONS, N_ACTIONS, action_index, mask_for_floor  # noqa: E402
from clidash.optimizer.agent import DQNAgent, double_dqn_target  # noqa: E402
from clidash.optimizer.config import DQNConfig  # noqa: E402
from clidash.optimizer.replay import Batch  # noqa: E402
from clidash.policy import Mode, ModeSpec  # noqa: E402

STRONG, RYW, B50, B250, B1000, EVENTUAL = range(6)


# --------------------------------------------------------------------------- actions


def test_actions_in_strength_order_and_indexed():
    assert [str(a) for a in ACTIONS] == ["STRONG", "READ_YOUR_WRITES", "BOUNDED:50", "BOUNDED:250",
                                         "BOUNDED:1000", "EVENTUAL"]
    assert action_index(ModeSpec.parse("BOUNDED:250")) == B250
    assert action_index(ModeSpec(Mode.BOUNDED, 1000)) == B1000   # int and float lag are the same spec
    with pytest.raises(ValueError):
        action_index(ModeSpec.parse("BOUNDED:100"))


@pytest.mark.parametrize("floor, allowed", [
    (None, [True] * 6),
    ("STRONG", [True, False, False, False, False, False]),
    ("READ_YOUR_WRITES", [True, True, False, False, False, False]),
    ("BOUNDED:250", [True, True, True, True, False, False]),
    ("BOUNDED:100", [True, True, True, False, False, False]),   # a floor between two actions
    ("EVENTUAL", [True] * 6),
])
def test_mask_for_floor(floor, allowed):
    assert mask_for_floor(None if floor is None else ModeSpec.parse(floor)) == allowed


# --------------------------------------------------------------------------- a toy MDP with a known optimum
#
# State 0 starts a 2-step chain: STRONG (reward 0) leads to state 1, whose best
# allowed action pays 1, so Q(0, STRONG) = gamma > 0.3 paid by any other action
# (which ends the episode). Only bootstrapping through the next state finds this.
# State 1's floor is BOUNDED:250, and EVENTUAL would pay 5 there if it were allowed.
# State 2's floor is STRONG. State 3 is a plain bandit with a penalised action.

MASKS = [
    mask_for_floor(None),
    mask_for_floor(ModeSpec.parse("BOUNDED:250")),
    mask_for_floor(ModeSpec.parse("STRONG")),
    mask_for_floor(None),
]
OPTIMAL = [STRONG, B50, STRONG, EVENTUAL]


def one_hot(s: int) -> list[float]:
    return [1.0 if i == s else 0.0 for i in range(4)]


def env_step(s: int, a: int) -> tuple[float, int, bool]:
    """(reward, next_state, done)"""
    if s == 0:
        return (0.0, 1, False) if a == STRONG else (0.3, 0, True)
    if s == 1:
        return {B50: 1.0, EVENTUAL: 5.0}.get(a, 0.0), 0, True
    if s == 2:
        return 0.5, 0, True
    return {EVENTUAL: 1.0, B1000: -1.0}.get(a, 0.0), 0, True


def toy_config(**overrides) -> DQNConfig:
    base = dict(obs_dim=4, seed=7, hidden_sizes=(32, 32), gamma=0.9, lr=3e-3, batch_size=32,
                buffer_size=2_000, learning_starts=100, train_frequency=1, target_update_interval=25,
                epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=400)
    base.update(overrides)
    return DQNConfig(**base)


def train_toy(agent: DQNAgent, steps: int, seed: int = 0) -> None:
    env_rng = random.Random(seed)
    s = env_rng.randrange(4)
    for _ in range(steps):
        a = agent.act(one_hot(s), MASKS[s], explore=True)
        assert MASKS[s][a], "explored a masked action"
        r, s2, done = env_step(s, a)
        agent.observe(one_hot(s), a, r, one_hot(s2), done, MASKS[s2])
        if agent.train_due():
            agent.train_step()
        s = env_rng.randrange(4) if done else s2


def test_learns_toy_mdp_optimum():
    agent = DQNAgent(toy_config())
    train_toy(agent, 800)   # 8 of 8 seeds tried converge by here
    greedy = [agent.act(one_hot(s), MASKS[s], explore=False) for s in range(4)]
    assert greedy == OPTIMAL
    # The chain value is learnt by bootstrapping: Q(0, STRONG) ~ gamma * 1.
    assert agent.q_values(one_hot(0), MASKS[0])[STRONG] == pytest.approx(0.9, abs=0.1)


def test_same_seed_gives_identical_q_values():
    def run() -> torch.Tensor:
        agent = DQNAgent(toy_config(learning_starts=50))
        train_toy(agent, 200)
        with torch.no_grad():
            return agent.q_net(torch.eye(4))

    first, second = run(), run()
    assert torch.equal(first, second)
    # ...and training moved the weights (guards against comparing two untrained nets).
    other = DQNAgent(toy_config(learning_starts=50))
    with torch.no_grad():
        assert not torch.equal(first, other.q_net(torch.eye(4)))


# --------------------------------------------------------------------------- masks


def test_act_never_returns_a_masked_action():
    agent = DQNAgent(toy_config(obs_dim=3, epsilon_start=0.5, epsilon_end=0.5))
    rng = random.Random(3)
    for _ in range(500):
        mask = [rng.random() < 0.4 for _ in range(N_ACTIONS)]
        if not any(mask):
            mask[rng.randrange(N_ACTIONS)] = True
        obs = [rng.uniform(-3, 3) for _ in range(3)]
        assert mask[agent.act(obs, mask, explore=True)]
        assert mask[agent.act(obs, mask, explore=False)]
        q = agent.q_values(obs, mask)
        assert all((q[i] == float("-inf")) != mask[i] for i in range(N_ACTIONS))


def test_act_rejects_an_empty_mask():
    agent = DQNAgent(toy_config())
    with pytest.raises(ValueError):
        agent.act(one_hot(0), [False] * N_ACTIONS, explore=False)


class FixedQ(torch.nn.Module):
    """A 'network' that returns the same Q row for every input."""

    def __init__(self, row: list[float]) -> None:
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.row.expand(obs.shape[0], -1)


def test_target_ignores_masked_next_action():
    # Online net rates EVENTUAL highest, but it is masked in s', so the choice must
    # fall to B250 (the best allowed); the target net's value for B250 is used.
    online = FixedQ([0.0, 1.0, 2.0, 3.0, -1.0, 9.0])
    target = FixedQ([10.0, 20.0, 30.0, 40.0, 50.0, 1000.0])
    mask = mask_for_floor(ModeSpec.parse("BOUNDED:250"))
    batch = Batch(obs=torch.zeros(2, 4), actions=torch.zeros(2, dtype=torch.int64),
                  rewards=torch.tensor([1.0, 1.0]), next_obs=torch.zeros(2, 4),
                  dones=torch.tensor([0.0, 1.0]), next_masks=torch.tensor([mask, [False] * 6]))
    y = double_dqn_target(online, target, batch, gamma=0.5)
    assert y.tolist() == [1.0 + 0.5 * 40.0, 1.0]   # terminal: no bootstrap, even with an empty mask


def test_training_target_respects_stored_masks():
    # Through the agent: every stored next state masks EVENTUAL. Make the online net
    # prefer EVENTUAL by a wide margin and the target net value it hugely; if the mask
    # leaked, the TD targets (and so Q) would blow up towards 1e6.
    agent = DQNAgent(toy_config(batch_size=8, learning_starts=0, target_update_interval=10_000))
    with torch.no_grad():
        agent.q_net.advantage.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 100.0]))
        agent.target_net.advantage.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 1e6]))
    no_eventual = mask_for_floor(ModeSpec.parse("BOUNDED:1000"))
    for _ in range(16):
        agent.observe(one_hot(0), STRONG, 0.0, one_hot(1), False, no_eventual)
    batch = agent.replay.sample(8)
    assert not batch.next_masks[:, EVENTUAL].any()
    y = double_dqn_target(agent.q_net, agent.target_net, batch, agent.config.gamma)
    with torch.no_grad():
        online_row = agent.q_net(torch.tensor([one_hot(1)]))[0]
        target_row = agent.target_net(torch.tensor([one_hot(1)]))[0]
    assert online_row.argmax().item() == EVENTUAL          # the trap is set
    chosen = max((i for i in range(N_ACTIONS) if no_eventual[i]), key=lambda i: online_row[i].item())
    assert torch.allclose(y, agent.config.gamma * target_row[chosen].expand(8))
    assert (y < agent.config.gamma * target_row[EVENTUAL]).all()
    assert torch.isfinite(torch.tensor(agent.train_step()["loss"]))


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path):
    agent = DQNAgent(toy_config(learning_starts=50))
    train_toy(agent, 200)
    path = tmp_path / "agent.pt"
    agent.save(path)
    loaded = DQNAgent.load(path)
    assert loaded.config == agent.config
    assert (loaded.steps, loaded.updates) == (agent.steps, agent.updates)
    for s in range(4):
        assert loaded.q_values(one_hot(s), MASKS[s]) == agent.q_values(one_hot(s), MASKS[s])
    with torch.no_grad():
        assert torch.equal(loaded.target_net(torch.eye(4)), agent.target_net(torch.eye(4)))
    # Exploration resumes from the same RNG state.
    assert [loaded.act(one_hot(0), None) for _ in range(20)] == [agent.act(one_hot(0), None) for _ in range(20)]


def test_epsilon_schedule():
    c = toy_config(epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_steps=100)
    assert c.epsilon(0) == 1.0
    assert c.epsilon(50) == pytest.approx(0.55)
    assert c.epsilon(100) == pytest.approx(0.1) and c.epsilon(10_000) == pytest.approx(0.1)
