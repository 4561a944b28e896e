"""Training, baselines and evaluation in the simulator: seconds, no servers.

What matters here: every policy is scored on the same trace, floors are never
undercut, the oracle really is a bound for the static policies, the tuned
heuristic finds the obvious per-route answer, and the evaluate output carries
every field the issue asks for.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from clidash.cli import main  # noqa: E402
from clidash.optimizer.actions import ACTIONS, N_ACTIONS  # noqa: E402
from clidash.optimizer.agent import DQNAgent  # noqa: E402
from clidash.optimizer.baselines import (always_eventual, always_strong, expected_stale_penalty,  # noqa: E402
                                         run_oracle, tuned_lag_threshold)
from clidash.optimizer.controller import Controller, RouteInput  # noqa: E402
from clidash.optimizer.evaluate import POLICIES, bootstrap_ci, evaluate  # noqa: E402
from clidash.optimizer.guardrails import Guardrails  # noqa: E402
from clidash.optimizer.reward import stale_penalty  # noqa: E402
from clidash.optimizer.sim.env import SimEnv  # noqa: E402
from clidash.optimizer.sim.rollout import run_episode  # noqa: E402
from clidash.optimizer.sim.scenarios import SCENARIOS  # noqa: E402
from clidash.optimizer.state import RouteState  # noqa: E402
from clidash.optimizer.training import DQNPolicy, TrainSettings, default_dqn_config, train  # noqa: E402
from clidash.policy import Mode, ModeSpec  # noqa: E402


def short(name: str, windows: int = 120):
    make = SCENARIOS[name]
    return lambda seed: replace(make(seed), windows=windows)


def tiny_agent(seed: int = 3, windows: int = 1_500) -> DQNAgent:
    cfg = replace(default_dqn_config(seed, windows), learning_starts=200, batch_size=32, buffer_size=2_000)
    return train(TrainSettings(total_windows=windows, seed=seed, scenarios=("steady", "mixed_objectives"),
                               dqn=cfg, validate_every=0))


def test_snapshot_restore_replays_a_window_exactly():
    env = SimEnv(SCENARIOS["lag_spikes"](4), 4)
    modes = {"product_page": ACTIONS[5], "cart": ACTIONS[1]}
    for _ in range(30):
        env.step(modes)
    snap = env.snapshot()
    first, _ = env.step(modes)
    env.step({"product_page": ACTIONS[0]})          # move on with something else
    env.restore(snap)
    again, _ = env.step(modes)
    assert {k: vars(v) for k, v in first.items()} == {k: vars(v) for k, v in again.items()}


def test_expected_stale_penalty_matches_the_step_shape():
    assert expected_stale_penalty(0.0, 1000, 0.01) == 0.0
    # far under budget: almost never a breach; far over: almost always the full penalty
    assert expected_stale_penalty(1.0, 1000, 0.01) < 0.01
    assert expected_stale_penalty(100.0, 1000, 0.01) == pytest.approx(stale_penalty(100, 1000, 0.01), rel=0.05)
    # at the budget, roughly half the windows breach: E[penalty] > penalty(E) = 0
    assert stale_penalty(10, 1000, 0.01) == 0.0
    assert expected_stale_penalty(10.0, 1000, 0.01) > 0.5


def test_oracle_bounds_the_static_policies_on_the_same_trace():
    make = short("lag_spikes", 200)
    oracle = run_oracle(make(2), 2).mean_reward
    for policy in (always_strong(), always_eventual(), tuned_lag_threshold(make, seeds=(500,), passes=1)):
        assert oracle >= run_episode(make(2), 2, policy).mean_reward - 0.02, policy.name


def test_tuned_threshold_keeps_the_strict_route_strong_and_offloads_the_tolerant_one():
    policy = tuned_lag_threshold(short("steady", 150), seeds=(500,), passes=1)
    assert policy.per_route["cart"] == ModeSpec(Mode.STRONG)           # budget 0.1%: any replica breaches it
    assert policy.per_route["product_page"].mode is Mode.BOUNDED


def test_floors_hold_for_every_policy_including_the_dqn():
    agent = tiny_agent()
    make = short("mixed_objectives", 150)
    for policy in (always_eventual(), DQNPolicy(agent), DQNPolicy(agent, explore=True)):
        stats = run_episode(make(1), 1, policy)
        assert stats.ryw_violations_protected == 0, policy.name
    # without a floor, read-your-writes does break (profile reads its own writes back)
    assert run_episode(make(1), 1, always_eventual()).ryw_violations > 0


def test_controller_never_applies_a_masked_action_and_logs_a_reason():
    agent = DQNAgent(default_dqn_config(5))
    ctrl = Controller(agent, Guardrails(dwell_windows=0), explore=True, epsilon=1.0)
    mask = (True, True, False, False, False, False)
    state = RouteState("r", mode="STRONG", reads_primary=100)
    for _ in range(200):
        (d,) = ctrl.decide([RouteInput("r", state, 20.0, 0.01, mask)])
        assert mask[d.applied] and mask[d.proposed]
        assert all(math.isinf(q) for i, q in enumerate(d.q_values) if not mask[i])
        assert d.reason
    assert len(d.q_values) == N_ACTIONS


def test_training_is_deterministic_for_a_seed():
    a, b = tiny_agent(seed=7), tiny_agent(seed=7)
    for pa, pb in zip(a.q_net.parameters(), b.q_net.parameters()):
        assert bool((pa == pb).all())
    assert a.updates > 0


def test_training_keeps_the_weights_that_validated_best(monkeypatch):
    monkeypatch.setitem(SCENARIOS, "steady", short("steady", 100))
    checks = []
    cfg = replace(default_dqn_config(2, 1_000), learning_starts=100, batch_size=32, buffer_size=2_000)
    agent = train(TrainSettings(total_windows=1_000, seed=2, scenarios=("steady",), dqn=cfg,
                                validate_every=300, validation_seeds=(600,)),
                  on_validation=lambda at, score, best: checks.append((at, score, best)))
    assert [at for at, _, _ in checks] == [300, 600, 900, 1000]
    best = max(score for _, score, _ in checks)
    from clidash.optimizer.training import Validator
    assert Validator(("steady",), (600,)).score(agent) == pytest.approx(best)


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_agreement():
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert lo < 3.0 < hi
    assert bootstrap_ci([2.0] * 6) == (2.0, 2.0)


def test_evaluate_reports_every_policy_and_the_targets(monkeypatch):
    monkeypatch.setitem(SCENARIOS, "steady", short("steady", 80))
    result = evaluate(tiny_agent(), seeds=2, scenarios=("steady",))
    sc = result["scenarios"]["steady"]
    assert set(sc["policies"]) == set(POLICIES)
    for row in sc["policies"].values():
        assert {"reward_mean", "ci_low", "ci_high", "stale_rate", "ryw_violations", "primary_read_share",
                "p99_ms"} <= set(row)
        assert row["ci_low"] <= row["reward_mean"] <= row["ci_high"]
    assert sc["policies"]["always_strong"]["primary_read_share"] == 1.0
    assert "gap_closed" in sc and "dqn_minus_best" in sc
    assert result["targets"]["zero_ryw_violations"] is True
    json.dumps(result)   # JSON-ready


def test_cli_train_then_evaluate_writes_json_and_png(tmp_path, monkeypatch):
    monkeypatch.setitem(SCENARIOS, "steady", short("steady", 60))
    ckpt, out, png = tmp_path / "a.pt", tmp_path / "r.json", tmp_path / "r.png"
    runner = CliRunner()
    res = runner.invoke(main, ["optimizer", "train", "--windows", "300", "--scenarios", "steady", "--quiet",
                               "--out", str(ckpt)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["optimizer", "evaluate", "--checkpoint", str(ckpt), "--seeds", "2",
                               "--scenarios", "steady", "--json", str(out), "--chart", str(png)])
    assert res.exit_code == 0, res.output
    assert "oracle gap closed" in res.output and "lag_threshold" in res.output
    data = json.loads(out.read_text())
    assert data["scenarios"]["steady"]["policies"]["dqn"]["ryw_violations"] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--checkpoint", "/nonexistent/x.pt"], "no checkpoint"),
    (["evaluate", "--seeds", "1"], "--seeds"),
    (["evaluate", "--scenarios", "nope"], "unknown scenario"),
    (["train", "--out", "x.pt", "--scenarios", "steady,nope"], "unknown scenario"),
    (["train", "--windows", "0", "--out", "x.pt"], "--windows"),
])
def test_cli_rejects_bad_arguments_clearly(args, message, tmp_path):
    res = CliRunner().invoke(main, ["optimizer", *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_cli_reports_an_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(main, ["optimizer", "evaluate", "--checkpoint", str(bad), "--seeds", "2"])
    assert res.exit_code == 1 and "cannot load checkpoint" in res.output
