"""The window-level simulator: determinism, mode guarantees, fallbacks, saturation, speed."""
from __future__ import annotations

import dataclasses
import time

import pytest

from clidash.optimizer.sim import SCENARIOS, SimEnv, erlang_c
from clidash.policy import Mode, ModeSpec

STRONG = ModeSpec(Mode.STRONG)
RYW = ModeSpec(Mode.READ_YOUR_WRITES)
EVENTUAL = ModeSpec(Mode.EVENTUAL)


def run(name: str, spec: ModeSpec, seed: int = 7, windows: int | None = None) -> list[dict]:
    env = SimEnv(SCENARIOS[name](seed), seed)
    routes = list(env.reset())
    out, done, n = [], False, 0
    while not done and (windows is None or n < windows):
        res, done = env.step({r: spec for r in routes})
        out.append(res)
        n += 1
    return out


def total(results: list[dict], attr: str) -> int:
    return sum(getattr(r, attr) for window in results for r in window.values())


def test_there_are_at_least_eight_named_scenarios():
    assert {"steady", "lag_spikes", "replica_loss", "flash_crowd", "write_heavy_ryw", "drift",
            "regime_switch", "mixed_objectives"} <= set(SCENARIOS)


@pytest.mark.parametrize("spec", [STRONG, RYW, ModeSpec(Mode.BOUNDED, 100.0), EVENTUAL])
def test_same_seed_same_results(spec):
    a = run("mixed_objectives", spec, seed=3, windows=200)
    b = run("mixed_objectives", spec, seed=3, windows=200)
    assert [{k: dataclasses.asdict(v) for k, v in w.items()} for w in a] == \
           [{k: dataclasses.asdict(v) for k, v in w.items()} for w in b]
    c = run("mixed_objectives", spec, seed=4, windows=200)
    assert total(a, "reads_primary") + total(a, "reads_replica") != total(c, "reads_primary") + total(c, "reads_replica")


def test_traffic_does_not_depend_on_the_actions():
    a = run("lag_spikes", STRONG, windows=100)
    b = run("lag_spikes", EVENTUAL, windows=100)
    assert [[(r.reads, r.writes, r.replica_lag_ms) for r in w.values()] for w in a] == \
           [[(r.reads, r.writes, r.replica_lag_ms) for r in w.values()] for w in b]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_strong_is_never_stale_and_reads_only_the_primary(name):
    res = run(name, STRONG, windows=300)
    assert total(res, "stale_reads") == 0
    assert total(res, "reads_replica") == 0
    assert total(res, "ryw_violations") == 0
    assert total(res, "reads_primary") > 0


def test_eventual_has_stale_reads_during_lag_spikes():
    res = run("lag_spikes", EVENTUAL)
    assert total(res, "stale_reads") > 0
    assert total(res, "reads_replica") > total(res, "reads_primary")
    # and it is worse than steady lag
    assert total(res, "stale_reads") > total(run("steady", EVENTUAL), "stale_reads")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_read_your_writes_never_violates(name):
    res = run(name, RYW)
    assert total(res, "ryw_violations") == 0


def test_eventual_does_violate_read_your_writes_when_writes_are_read_back():
    assert total(run("write_heavy_ryw", EVENTUAL), "ryw_violations") > 0
    ryw = run("write_heavy_ryw", RYW)
    assert sum(r.fallbacks_by_reason["ryw"] for w in ryw for r in w.values()) > 0


def test_bounded_only_uses_replicas_within_its_bound():
    res = run("lag_spikes", ModeSpec(Mode.BOUNDED, 100.0))
    for window in res:
        for r in window.values():
            # every healthy replica within the bound -> no lag fallback
            if r.replica_lag_ms <= 100.0 and r.healthy_replicas:
                assert r.fallbacks_by_reason["lag"] == 0
    assert sum(r.fallbacks_by_reason["lag"] for w in res for r in w.values()) > 0


@pytest.mark.parametrize("spec", [RYW, ModeSpec(Mode.BOUNDED, 1000.0), EVENTUAL])
def test_replica_loss_falls_back_to_primary_without_errors(spec):
    res = run("replica_loss", spec)
    assert total(res, "errors") == 0
    down = [w for w in res if next(iter(w.values())).healthy_replicas == 0]
    assert down, "scenario should have windows with no healthy replica"
    for w in down:
        for r in w.values():
            assert r.reads_replica == 0
            assert r.fallbacks_by_reason["replica_down"] == r.reads_primary == r.reads
    assert sum(r.fallbacks_by_reason["replica_down"] for w in res for r in w.values()) > 0


def test_flash_crowd_loads_the_primary_more_under_strong():
    strong = run("flash_crowd", STRONG)
    eventual = run("flash_crowd", EVENTUAL)
    peak = lambda rs: max(next(iter(w.values())).primary_utilisation for w in rs)  # noqa: E731
    assert peak(strong) > 0.95 > peak(eventual)
    assert sum(next(iter(w.values())).primary_utilisation for w in strong) > \
           sum(next(iter(w.values())).primary_utilisation for w in eventual)
    # a saturated primary shows up in latency
    assert max(r.route_p99_ms for w in strong for r in w.values()) > \
           10 * max(r.route_p99_ms for w in eventual for r in w.values())


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)          # M/M/1: P(wait) = rho
    assert erlang_c(2, 0.5) == pytest.approx(1 / 3)        # 2 servers, a = 1 Erlang


def test_episode_ends_after_the_scenario_windows():
    env = SimEnv(SCENARIOS["steady"](0), 0)
    routes = env.reset()
    n, done = 0, False
    while not done:
        _, done = env.step({r: STRONG for r in routes})
        n += 1
    assert n == env.scenario.windows
    assert env.observe()["cart"]["window"] == n - 1


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_runs_500_windows_in_under_a_second(name):
    t0 = time.perf_counter()
    run(name, EVENTUAL, windows=500)
    assert time.perf_counter() - t0 < 1.0
