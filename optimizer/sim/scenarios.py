"""Named scenarios: SCENARIOS[name](seed) -> Scenario.

Capacity reference (calibration): one server = WORKERS / service time, i.e. the
primary serves ~5,900 point reads/s (2 x 1000/0.34) before it saturates, a replica
~8,000/s. Rates below are set against that: steady traffic uses ~1/3 of the
primary, the flash crowd needs the replicas to stay under it. The seed moves
event times and sizes a little so that training does not overfit one timeline.
"""
from __future__ import annotations

import random
from typing import Callable

from .model import LagProcess, Multiplier, Route, Scenario


def _base_routes() -> list[Route]:
    return [
        Route("product_page", read_rate=1200, write_rate=5, ryw_share=0.0,
              data_age_ms=10_000, objective_ms=20, stale_budget=0.01),
        Route("cart", read_rate=300, write_rate=60, ryw_share=0.3, ryw_age_ms=150,
              data_age_ms=2_000, objective_ms=30, stale_budget=0.001, floor="READ_YOUR_WRITES"),
        # Mostly reads back its own writes; other users' data is cold: READ_YOUR_WRITES is
        # the right mode here (its floor), STRONG only while lag makes the rest stale.
        Route("account", read_rate=200, write_rate=10, ryw_share=0.8, ryw_age_ms=300,
              data_age_ms=120_000, objective_ms=30, stale_budget=0.01, floor="READ_YOUR_WRITES"),
    ]


def steady(seed: int) -> Scenario:
    return Scenario("steady", _base_routes(), [LagProcess(base_ms=20), LagProcess(base_ms=25)],
                    description="constant load, small noisy lag on two replicas")


def lag_spikes(seed: int) -> Scenario:
    rng = random.Random(seed)
    reps = [LagProcess(base_ms=20, spike_prob=0.02 + 0.01 * rng.random(), spike_peak_ms=3_000),
            LagProcess(base_ms=25, spike_prob=0.02 + 0.01 * rng.random(), spike_peak_ms=1_500)]
    return Scenario("lag_spikes", _base_routes(), reps,
                    description="episodes where replica lag climbs to seconds and recovers")


def replica_loss(seed: int) -> Scenario:
    rng = random.Random(seed)
    a = 100 + rng.randrange(50)
    reps = [LagProcess(base_ms=20, down=[(a, a + 100)], loss_prob=0.003),
            LagProcess(base_ms=25, down=[(a + 50, a + 150)], loss_prob=0.003)]
    return Scenario("replica_loss", _base_routes(), reps,
                    description="replicas go down (overlapping for 50 windows: none left) plus random losses")


def flash_crowd(seed: int) -> Scenario:
    rng = random.Random(seed)
    start = 150 + rng.randrange(100)
    routes = _base_routes() + [Route("landing", read_rate=900, write_rate=2, data_age_ms=30_000,
                                     objective_ms=25, stale_budget=0.02)]
    return Scenario("flash_crowd", routes, [LagProcess(base_ms=20), LagProcess(base_ms=25)],
                    [Multiplier(start, start + 100, read=6.0, route="landing")],
                    description="landing reads x6 for 100 windows: more than the primary can serve alone")


def write_heavy_ryw(seed: int) -> Scenario:
    routes = [Route("feed_post", read_rate=1200, write_rate=800, ryw_share=0.5, ryw_age_ms=100,
                    data_age_ms=1_000, objective_ms=30, stale_budget=0.005, floor="READ_YOUR_WRITES"),
              Route("feed_view", read_rate=800, write_rate=0, data_age_ms=1_000,
                    objective_ms=40, stale_budget=0.05)]
    reps = [LagProcess(base_ms=40, spike_prob=0.01, spike_peak_ms=800), LagProcess(base_ms=50)]
    return Scenario("write_heavy_ryw", routes, reps,
                    description="many writes read back within ~100 ms; replay load raises lag")


def drift(seed: int) -> Scenario:
    rng = random.Random(seed)
    reps = [LagProcess(base_ms=15, base_schedule=[(200, 40), (350, 90), (500, 150)]),
            LagProcess(base_ms=20, base_schedule=[(250, 60), (450, 120)])]
    return Scenario("drift", _base_routes(), reps,
                    [Multiplier(100, 500, read=2.5 + rng.random(), ramp=True),
                     Multiplier(100, 500, write=3.0, route="cart", ramp=True)],
                    description="reads and cart writes grow slowly while lag creeps up")


def regime_switch(seed: int) -> Scenario:
    rng = random.Random(seed)
    sw = 250 + rng.randrange(100)
    reps = [LagProcess(base_ms=15, base_schedule=[(sw, 400)], spike_prob=0.005),
            LagProcess(base_ms=20, base_schedule=[(sw, 500)])]
    return Scenario("regime_switch", _base_routes(), reps,
                    [Multiplier(sw, 10**9, read=0.7, write=5.0)],
                    description="abrupt switch from read-mostly/low lag to write-heavy/high lag")


def mixed_objectives(seed: int) -> Scenario:
    rng = random.Random(seed)
    routes = [
        Route("analytics", read_rate=600, write_rate=1, data_age_ms=60_000, objective_ms=200, stale_budget=0.10),
        Route("checkout", read_rate=200, write_rate=40, ryw_share=0.6, ryw_age_ms=80,
              data_age_ms=500, objective_ms=30, stale_budget=0.0, floor="READ_YOUR_WRITES"),
        Route("profile", read_rate=500, write_rate=30, ryw_share=0.4, ryw_age_ms=300,
              data_age_ms=5_000, objective_ms=25, stale_budget=0.005),
        Route("search", read_rate=1500, write_rate=0, data_age_ms=20_000, objective_ms=15, stale_budget=0.02),
    ]
    reps = [LagProcess(base_ms=20, spike_prob=0.01 + 0.01 * rng.random(), spike_peak_ms=2_000),
            LagProcess(base_ms=30, spike_prob=0.01, spike_peak_ms=1_000, loss_prob=0.002)]
    return Scenario("mixed_objectives", routes, reps,
                    [Multiplier(300, 380, read=2.0, route="search")],
                    description="four routes with different latency objectives and stale budgets")


SCENARIOS: dict[str, Callable[[int], Scenario]] = {
    "steady": steady,
    "lag_spikes": lag_spikes,
    "replica_loss": replica_loss,
    "flash_crowd": flash_crowd,
    "write_heavy_ryw": write_heavy_ryw,
    "drift": drift,
    "regime_switch": regime_switch,
    "mixed_objectives": mixed_objectives,
}
