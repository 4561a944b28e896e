"""`clidash optimizer evaluate`: every policy on the same seeded traces, with confidence intervals.

Per scenario and seed (evaluation seeds 0..n-1; training and tuning never use
them), each policy runs one episode; its score is the mean per-window reward
summed over routes (optimizer.reward). Reported per policy: the mean over seeds
with a percentile-bootstrap 95% CI, stale-read rate (stale / reads), RYW
violations on routes whose floor is READ_YOUR_WRITES or STRONG, primary read
share, and p99 (99th percentile of route-window p99s).

DQN vs the best heuristic uses the paired per-seed difference (same trace), so
its CI excludes the trace-to-trace variance both share. Gap closed is
(DQN - always_strong) / (oracle - always_strong).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from .agent import DQNAgent
from .baselines import always_eventual, always_strong, lsn_ryw, run_oracle, tuned_lag_threshold
from .sim.rollout import EpisodeStats, run_episode
from .sim.scenarios import SCENARIOS
from .training import DQNPolicy

HEURISTICS = ("always_strong", "always_eventual", "lag_threshold", "lsn_ryw")
POLICIES = ("dqn", *HEURISTICS, "oracle")
BOOTSTRAP_RESAMPLES = 4_000

# Targets fixed by the issue before any evaluation was run.
TARGET_WINS_WITH_CI = 5
TARGET_GAP_CLOSED = 0.80


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, so reports are reproducible)."""
    if not values:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


@dataclass
class PolicySummary:
    rewards: list[float]
    stale_rate: float
    ryw_violations: int
    primary_read_share: float
    p99_ms: float

    @classmethod
    def of(cls, episodes: Sequence[EpisodeStats]) -> "PolicySummary":
        reads = sum(e.reads for e in episodes)
        p99s = sorted(e.p99_ms for e in episodes)
        return cls(rewards=[e.mean_reward for e in episodes],
                   stale_rate=sum(e.stale_reads for e in episodes) / reads if reads else 0.0,
                   ryw_violations=round(sum(e.ryw_violations_protected for e in episodes)),
                   primary_read_share=sum(e.primary_reads for e in episodes) / reads if reads else 0.0,
                   p99_ms=sum(p99s) / len(p99s) if p99s else 0.0)

    def to_dict(self) -> dict:
        lo, hi = bootstrap_ci(self.rewards)
        return {"reward_mean": sum(self.rewards) / len(self.rewards), "ci_low": lo, "ci_high": hi,
                "stale_rate": self.stale_rate, "ryw_violations": self.ryw_violations,
                "primary_read_share": self.primary_read_share, "p99_ms": self.p99_ms,
                "per_seed_reward": self.rewards}


def evaluate(agent: DQNAgent, seeds: int = 10, scenarios: Sequence[str] = tuple(SCENARIOS),
             progress: Callable[[str], None] | None = None) -> dict:
    """The full comparison as a JSON-ready dict (see module docstring)."""
    if seeds < 2:
        raise ValueError("--seeds must be at least 2 for a confidence interval")
    out: dict = {"seeds": list(range(seeds)), "scenarios": {}}
    for name in scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        make = SCENARIOS[name]
        threshold = tuned_lag_threshold(make)
        fixed = {"always_strong": always_strong(), "always_eventual": always_eventual(),
                 "lag_threshold": threshold, "lsn_ryw": lsn_ryw(), "dqn": DQNPolicy(agent)}
        episodes: dict[str, list[EpisodeStats]] = {p: [] for p in POLICIES}
        for seed in range(seeds):
            for pname, policy in fixed.items():
                episodes[pname].append(run_episode(make(seed), seed, policy))
            episodes["oracle"].append(run_oracle(make(seed), seed))
        policies = {p: PolicySummary.of(episodes[p]).to_dict() for p in POLICIES}
        out["scenarios"][name] = {
            "policies": policies,
            "lag_threshold_settings": {route: str(spec) for route, spec in threshold.per_route.items()},
            **compare(policies),
        }
        if progress:
            progress(name)
    out["targets"] = check_targets(out["scenarios"])
    return out


def compare(policies: dict) -> dict:
    """DQN against the best heuristic (paired by seed) and its share of the oracle gap."""
    best = max(HEURISTICS, key=lambda p: policies[p]["reward_mean"])
    diffs = [d - b for d, b in zip(policies["dqn"]["per_seed_reward"], policies[best]["per_seed_reward"])]
    lo, hi = bootstrap_ci(diffs, seed=1)
    strong, oracle, dqn = (policies[p]["reward_mean"] for p in ("always_strong", "oracle", "dqn"))
    gap = oracle - strong
    return {"best_heuristic": best,
            "dqn_minus_best": {"mean": sum(diffs) / len(diffs), "ci_low": lo, "ci_high": hi},
            "gap_closed": (dqn - strong) / gap if gap > 1e-9 else None}


def check_targets(scenarios: dict) -> dict:
    rows = scenarios.values()
    violations = sum(s["policies"]["dqn"]["ryw_violations"] for s in rows)
    at_least = sum(1 for s in rows if s["dqn_minus_best"]["mean"] >= 0)
    above = sum(1 for s in rows if s["dqn_minus_best"]["ci_low"] > 0)
    gaps = [s["gap_closed"] for s in rows if s["gap_closed"] is not None]
    n = len(scenarios)
    return {
        "ryw_violations_on_protected_routes": violations,
        "zero_ryw_violations": violations == 0,
        "scenarios_at_least_best_heuristic": at_least,
        "at_least_best_heuristic_everywhere": at_least == n,
        "scenarios_above_best_heuristic_ci": above,
        "above_in_enough_scenarios": above >= min(TARGET_WINS_WITH_CI, n),
        "min_gap_closed": min(gaps) if gaps else None,
        "mean_gap_closed": sum(gaps) / len(gaps) if gaps else None,
        "gap_closed_target_met": bool(gaps) and min(gaps) >= TARGET_GAP_CLOSED,
    }


def format_report(result: dict) -> str:
    lines = []
    for name, sc in result["scenarios"].items():
        lines.append(f"\n== {name}  (best heuristic: {sc['best_heuristic']}; "
                     f"lag_threshold: {', '.join(f'{r}={m}' for r, m in sc['lag_threshold_settings'].items())})")
        lines.append(f"  {'policy':<16}{'reward':>9}  {'95% CI':<19}{'stale':>9}{'RYWviol':>9}"
                     f"{'primary':>9}{'p99 ms':>9}")
        for p in POLICIES:
            r = sc["policies"][p]
            lines.append(f"  {p:<16}{r['reward_mean']:>9.3f}  [{r['ci_low']:>7.3f}, {r['ci_high']:>7.3f}]"
                         f"{r['stale_rate']:>9.4f}{r['ryw_violations']:>9d}{r['primary_read_share']:>9.3f}"
                         f"{r['p99_ms']:>9.2f}")
        d = sc["dqn_minus_best"]
        gap = "n/a" if sc["gap_closed"] is None else f"{100 * sc['gap_closed']:.0f}%"
        lines.append(f"  dqn - {sc['best_heuristic']}: {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                     f"   oracle gap closed: {gap}")
    t = result["targets"]
    lines.append("\n== targets")
    lines.append(f"  RYW violations on READ_YOUR_WRITES/STRONG-floor routes: {t['ryw_violations_on_protected_routes']}"
                 f"  ({'met' if t['zero_ryw_violations'] else 'MISSED'})")
    n = len(result["scenarios"])
    lines.append(f"  DQN >= best heuristic: {t['scenarios_at_least_best_heuristic']}/{n} scenarios"
                 f"  ({'met' if t['at_least_best_heuristic_everywhere'] else 'MISSED'}, target {n}/{n})")
    lines.append(f"  DQN > best heuristic, CI excluding 0: {t['scenarios_above_best_heuristic_ci']}/{n}"
                 f"  ({'met' if t['above_in_enough_scenarios'] else 'MISSED'}, target {min(TARGET_WINS_WITH_CI, n)})")
    if t["min_gap_closed"] is not None:
        lines.append(f"  oracle gap closed: min {100 * t['min_gap_closed']:.0f}%, mean {100 * t['mean_gap_closed']:.0f}%"
                     f"  ({'met' if t['gap_closed_target_met'] else 'MISSED'}, target {TARGET_GAP_CLOSED:.0%} everywhere)")
    return "\n".join(lines)


def write_chart(result: dict, path: str) -> None:
    """Grouped bars: mean reward per policy per scenario, with the 95% CI as error bars."""
    import matplotlib
    matplotlib.use("Agg")   # no display: a file only
    from matplotlib import pyplot as plt

    names = list(result["scenarios"])
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names)), 5))
    width = 0.8 / len(POLICIES)
    for i, p in enumerate(POLICIES):
        rows = [result["scenarios"][n]["policies"][p] for n in names]
        # always_eventual/lsn_ryw can sit far below zero; clip the bars so the others stay readable.
        means = [max(r["reward_mean"], -2.0) for r in rows]
        err = [[max(0.0, r["reward_mean"] - r["ci_low"]) if r["reward_mean"] > -2 else 0 for r in rows],
               [max(0.0, r["ci_high"] - r["reward_mean"]) if r["reward_mean"] > -2 else 0 for r in rows]]
        ax.bar([x + (i - (len(POLICIES) - 1) / 2) * width for x in range(len(names))], means, width,
               yerr=err, capsize=2, label=p)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("mean reward per window (clipped at -2)")
    ax.set_title(f"CLIDash optimizer: policies on {len(result['seeds'])} seeded traces per scenario (95% CI)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
