"""Optimizer policy parts: observation features, reward, guardrails. Pure Python."""
import math

import pytest

from clidash.policy import Mode, ModeSpec
from optimizer.actions import ACTIONS, N_ACTIONS, action_index, mask_for_floor
from optimizer.guardrails import Guardrails
from optimizer.reward import reward
from optimizer.sim.env import WindowResult
from optimizer.state import OBS_DIM, RouteState, action_for_mode, features, hist_quantile

BOUNDS = [0.001, 0.005, 0.01, 0.05, 0.1]
EVENTUAL = action_index(ModeSpec(Mode.EVENTUAL))
B250 = action_index(ModeSpec(Mode.BOUNDED, 250.0))
RYW = action_index(ModeSpec(Mode.READ_YOUR_WRITES))
B50 = action_index(ModeSpec(Mode.BOUNDED, 50.0))


def _route(**kw):
    r = {"route": "product_page", "mode": "EVENTUAL", "reads_primary": 120, "reads_replica": 880,
         "writes": 3, "errors": 1, "fallbacks": {"lag": 0, "ryw": 2, "replica_down": 0},
         "latency_buckets_s": BOUNDS,
         "read_primary_hist": [0, 10, 100, 10, 0, 0], "read_replica_hist": [800, 80, 0, 0, 0, 0],
         "write_hist": [0, 3, 0, 0, 0, 0], "ryw_exposed_reads": 5, "stale_audited": 100, "stale_found": 1}
    r.update(kw)
    return r


REPLICAS = [{"name": "r1", "lag_ms_max": 12.5, "healthy": True},
            {"name": "r2", "lag_ms_max": 400.0, "healthy": True},
            {"name": "r3", "lag_ms_max": 5.0, "healthy": False}]


# ------------------------------------------------------------------ state


def test_hist_quantile_interpolates_within_a_bucket_and_caps_at_inf():
    # 100 samples all in (5ms, 10ms]: p50 is half way.
    assert hist_quantile(BOUNDS, [0, 0, 100, 0, 0, 0], 0.5) == pytest.approx(7.5)
    assert hist_quantile(BOUNDS, [0, 0, 0, 0, 0, 10], 0.99) == pytest.approx(100.0)
    assert hist_quantile(BOUNDS, [0] * 6) == 0.0


def test_feature_vector_length_ranges_and_mask():
    s = RouteState.from_record(_route(), REPLICAS, window_s=1.0)
    mask = mask_for_floor(ModeSpec(Mode.BOUNDED, 250.0))
    prev = RouteState.from_record(_route(), [{"name": "r1", "lag_ms_max": 1.0, "healthy": True}])
    v = features(s, objective_ms=20.0, stale_budget=0.01, windows_since_change=100, mask=mask, prev=prev)
    assert len(v) == OBS_DIM and all(math.isfinite(x) for x in v)
    assert all(-1.0 <= x <= 4.0 for x in v)
    assert v[5] > 0                                   # lag rose vs the previous window
    assert v[6:9] == pytest.approx([1 / 3, 1 / 3, 2 / 3])  # r3 unhealthy counts as not within
    assert v[12] == pytest.approx(1.0)                # 1% stale over a 1% budget
    onehot = v[13:13 + N_ACTIONS]
    assert onehot == [1.0 if i == EVENTUAL else 0.0 for i in range(N_ACTIONS)]
    assert v[13 + N_ACTIONS] == 1.0                   # since-change capped
    mask_at = 14 + N_ACTIONS
    assert v[mask_at:mask_at + N_ACTIONS] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert v[-3:] == [pytest.approx(0.5), 0.0, 0.0]   # budget 1% -> 0.5; nothing audited remembered yet
    seen = features(s, objective_ms=20.0, stale_budget=0.01, stale_seen=(2.0, EVENTUAL))
    assert seen[-2:] == [2.0, 1.0]


def test_features_from_a_sim_window_and_mode_mapping():
    w = WindowResult("r", "BOUNDED:250", reads_primary=10, reads_replica=90, writes=5,
                     primary_p99_ms=8.0, replica_p99_ms=3.0, route_p99_ms=7.0,
                     replica_lag_ms=30.0, healthy_replicas=2)
    v = features(RouteState.from_window(w), objective_ms=10.0, stale_budget=0.01)
    assert len(v) == OBS_DIM and v[13 + B250] == 1.0 and v[9] == pytest.approx(0.8)
    assert action_for_mode("BOUNDED:100") == action_index(ModeSpec(Mode.BOUNDED, 50.0))


# ------------------------------------------------------------------ reward


def _win(mode, primary, replica, stale=0, p99=5.0, util=0.5):
    return WindowResult("r", mode, reads_primary=primary, reads_replica=replica, writes=10,
                        stale_reads=stale, route_p99_ms=p99, primary_utilisation=util, healthy_replicas=2)


def test_eventual_without_stale_beats_strong_on_a_read_heavy_route():
    strong, _ = reward(_win("STRONG", 1000, 0, p99=18.0, util=0.9), 0, 0, 20.0, 0.01)
    eventual, terms = reward(_win("EVENTUAL", 50, 950, p99=4.0, util=0.3), EVENTUAL, EVENTUAL, 20.0, 0.01)
    assert eventual > strong
    assert sum(terms.values()) == pytest.approx(eventual)
    assert set(terms) == {"offload", "latency_gain", "stale", "latency_over", "errors", "overload", "switch"}


def test_audited_stale_over_budget_makes_the_reward_negative():
    r, terms = reward(_win("EVENTUAL", 0, 1000, stale=30, p99=1.0, util=0.1), EVENTUAL, EVENTUAL, 20.0, 0.01)
    assert r < 0 and terms["stale"] < 0
    # the record path uses the audit counts only
    rec = dict(_route(stale_audited=50, stale_found=5), replicas=REPLICAS)
    r2, t2 = reward(rec, EVENTUAL, EVENTUAL, 20.0, 0.01)
    assert r2 < 0 and t2["stale"] < 0
    ok, t3 = reward(dict(_route(stale_audited=50, stale_found=0), replicas=REPLICAS), EVENTUAL, EVENTUAL, 20.0, 0.01)
    assert ok > 0 and t3["stale"] == 0


def test_switching_costs():
    w = _win("EVENTUAL", 50, 950)
    same, _ = reward(w, EVENTUAL, EVENTUAL, 20.0, 0.01)
    switched, terms = reward(w, EVENTUAL, B250, 20.0, 0.01)
    assert switched < same and terms["switch"] < 0


# ------------------------------------------------------------------ guardrails


def _dwell(g, n):
    for _ in range(n):
        g.end_window()


def test_floor_is_never_undercut():
    g = Guardrails(dwell_windows=0)
    mask = mask_for_floor(ModeSpec(Mode.READ_YOUR_WRITES))
    final, ev = g.decide("r", EVENTUAL, 0, mask, 0.0, 0.01)
    assert final == RYW and ev[0][0] == "floor" and g.fired["floor"] == 1
    for proposed in range(N_ACTIONS):
        for current in range(RYW + 1):
            f, _ = Guardrails(dwell_windows=0).decide("r", proposed, current, mask, 0.0, 0.01)
            assert mask[f]


def test_tightening_is_immediate_and_relaxing_is_one_step_after_dwell():
    g = Guardrails(dwell_windows=3)
    full = [True] * N_ACTIONS
    assert g.decide("r", 0, EVENTUAL, full, 0.0, 0.01) == (0, [])   # tighten at once, no dwell
    final, ev = g.decide("r", EVENTUAL, 0, full, 0.0, 0.01)
    assert final == 0 and ev[0][0] == "dwell"
    _dwell(g, 2)
    assert g.decide("r", EVENTUAL, 0, full, 0.0, 0.01)[0] == 0
    g.end_window()
    final, ev = g.decide("r", EVENTUAL, 0, full, 0.0, 0.01)
    # toward a lag-bounded target the step from STRONG is BOUNDED:50: READ_YOUR_WRITES
    # bounds nothing for sessions without writes
    assert final == B50 and [e[0] for e in ev] == ["step"]
    # the step restarts the dwell clock
    assert g.decide("r", EVENTUAL, B50, full, 0.0, 0.01)[0] == B50
    assert g.fired["dwell"] == 3 and g.fired["step"] == 1
    _dwell(g, 3)
    assert g.decide("r", EVENTUAL, B50, full, 0.0, 0.01)[0] == B250    # then one action at a time


def test_relaxing_to_read_your_writes_itself_is_one_step():
    g = Guardrails(dwell_windows=0)
    assert g.decide("r", RYW, 0, [True] * N_ACTIONS, 0.0, 0.01) == (RYW, [])
    assert g.decide("q", EVENTUAL, RYW, [True] * N_ACTIONS, 0.0, 0.01)[0] == B50


def test_tripwire_reverts_to_strong_and_freezes():
    g = Guardrails(stale_tripwire=3.0, freeze_windows=4, dwell_windows=0)
    full = [True] * N_ACTIONS
    final, ev = g.decide("r", EVENTUAL, EVENTUAL, full, 0.05, 0.01)
    assert final == 0 and ev[0][0] == "tripwire" and g.is_frozen("r")
    for _ in range(3):
        g.end_window()
        final, ev = g.decide("r", EVENTUAL, 0, full, 0.0, 0.01)
        assert final == 0 and ev[0][0] == "frozen"
    g.end_window()
    assert not g.is_frozen("r")
    assert g.decide("r", EVENTUAL, 0, full, 0.0, 0.01)[0] == B50
    assert g.fired["tripwire"] == 1 and g.fired["frozen"] == 3
    # within k x budget: no trip
    assert Guardrails().decide("x", 0, 0, full, 0.02, 0.01) == (0, [])


def test_rate_limit_defers_relaxations_but_not_tightenings():
    g = Guardrails(dwell_windows=0, max_changes_per_window=2)
    full = [True] * N_ACTIONS
    assert g.decide("a", 1, 0, full, 0.0, 0.01)[0] == 1
    assert g.decide("b", 1, 0, full, 0.0, 0.01)[0] == 1
    final, ev = g.decide("c", 1, 0, full, 0.0, 0.01)
    assert final == 0 and ev == [("rate_limit", "c", ev[0][2])]
    assert g.decide("d", 0, EVENTUAL, full, 0.0, 0.01) == (0, [])      # tightening goes through
    assert g.decide("e", 0, 0, full, 1.0, 0.01)[0] == 0                # tripwire too
    g.end_window()
    assert g.decide("c", 1, 0, full, 0.0, 0.01)[0] == 1                # next window: applied
    assert g.fired == {"rate_limit": 1, "tripwire": 1}
