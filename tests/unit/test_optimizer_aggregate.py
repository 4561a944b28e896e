"""The live optimizer's window aggregator and settings: pure, no servers."""
import json
import math

import pytest

from clidash.config import ConfigError
from clidash.policy import ModeSpec
from clidash.proxy.stats import LATENCY_BUCKETS_S
from clidash.proxy.telemetry import StatementDelta, build_records
from clidash.optimizer.live.aggregate import BadRecord, ServiceWindow, check_compatible, parse_record
from clidash.optimizer.live.metrics import hist_mean_s, latency_saved_s
from clidash.optimizer.live.settings import DEFAULT_CHECKPOINT, build_settings
from clidash.optimizer.state import RouteState

N_BUCKETS = len(LATENCY_BUCKETS_S) + 1


def hist(**at):
    """A histogram with counts at bucket indexes: hist(b3=2) -> 2 samples in bucket 3."""
    h = [0] * N_BUCKETS
    for key, n in at.items():
        h[int(key[1:])] += n
    return h


def proxy_record(route="catalog", mode="EVENTUAL", primary=(), replica=(), writes=(), audits=(0, 0, 0),
                 lag=12.5, healthy=True, proxy_id="p1", service="svc", window_start=1000.0):
    """A record exactly as the proxy builds it (proxy.telemetry.build_records)."""
    deltas = {}
    if primary:
        deltas[(service, route, "read", "primary")] = StatementDelta(list(primary), 0, {"mode_strong": sum(primary)})
    if replica:
        deltas[(service, route, "read", "replica")] = StatementDelta(list(replica), 1, {"replica": sum(replica)})
    if writes:
        deltas[(service, route, "write", "primary")] = StatementDelta(list(writes), 0, {})
    [rec] = build_records(deltas, {}, extras={(service, route): list(audits)}, proxy_id=proxy_id,
                          window_start=window_start, window_s=1.0,
                          replicas=[("replica-1", lag, healthy)], policy_version=lambda s: 7,
                          mode_for=lambda s, r: mode)
    return json.loads(json.dumps(rec))


def fold(*records, service="svc"):
    win = ServiceWindow(service, 0)
    for rec in records:
        win.fold(parse_record(json.dumps(rec)))
    return win


def test_counts_and_histograms_add_up_over_records():
    a = proxy_record(primary=hist(b3=2), replica=hist(b1=5, b2=1), writes=hist(b4=3), audits=(2, 6, 1))
    b = proxy_record(primary=hist(b3=1, b16=1), replica=hist(b1=4), audits=(1, 4, 0), proxy_id="p2")
    win = fold(a, b)
    sums = win.routes["catalog"]
    assert sums.counts == {"reads_primary": 4, "reads_replica": 10, "writes": 3, "errors": 2,
                           "ryw_exposed_reads": 3, "stale_audited": 10, "stale_found": 1}
    assert sums.hists["read_primary_hist"] == hist(b3=3, b16=1)
    assert sums.hists["read_replica_hist"] == hist(b1=9, b2=1)
    assert sums.hists["write_hist"] == hist(b4=3)
    assert win.records == 2 and win.proxies == {"p1", "p2"} and win.policy_version == 7
    # The folded route reads back as a telemetry route entry the optimizer's state accepts.
    state = RouteState.from_record(sums.as_record(), win.replica_list(), 10.0)
    assert (state.reads_primary, state.reads_replica, state.stale_found, state.stale_audited) == (4, 10, 1, 10)


def test_replicas_keep_the_worst_lag_and_are_healthy_only_if_always_healthy():
    win = fold(proxy_record(replica=hist(b1=1), lag=10.0),
               proxy_record(replica=hist(b1=1), lag=900.0, healthy=False),
               proxy_record(replica=hist(b1=1), lag=50.0))
    assert win.replica_list() == [{"name": "replica-1", "lag_ms_max": 900.0, "healthy": False}]
    unknown = fold(proxy_record(replica=hist(b1=1), lag=None))
    assert unknown.replica_list()[0]["lag_ms_max"] is None and unknown.max_lag_ms is None
    assert fold(proxy_record(replica=hist(b1=1), lag=None), proxy_record(replica=hist(b1=1), lag=3.0)).max_lag_ms == 3.0


def test_mode_is_the_most_reported_and_a_tie_goes_to_the_stronger():
    ev = proxy_record(mode="EVENTUAL", replica=hist(b1=1))
    st = proxy_record(mode="STRONG", primary=hist(b1=1))
    assert fold(ev, ev, st).routes["catalog"].mode == "EVENTUAL"
    assert fold(ev, st).routes["catalog"].mode == "STRONG"
    assert fold(proxy_record(mode="BOUNDED:250", replica=hist(b1=1)),
                proxy_record(mode="BOUNDED:50", replica=hist(b1=1))).routes["catalog"].mode == "BOUNDED:50"


def test_partials_merge_like_folding_everything_in_one_place_and_survive_json():
    recs = [proxy_record(primary=hist(b2=i), replica=hist(b5=2 * i), audits=(0, i, i % 2), lag=float(i), proxy_id=f"p{i}")
            for i in range(1, 7)]
    whole = fold(*recs)
    left, right = fold(*recs[:2]), fold(*recs[2:])
    merged = ServiceWindow.from_json(left.to_json()).merge(ServiceWindow.from_json(right.to_json()))
    assert merged.to_json() == whole.to_json()


@pytest.mark.parametrize("raw, why", [
    (b"{nope", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"service": "", "window_start": 1, "window_s": 1, "routes": []}), "service"),
    (json.dumps({"service": "s", "window_start": "x", "window_s": 1, "routes": []}), "window_start"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 0, "routes": []}), "window_s"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1}), "routes"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1, "routes": [{"route": "r", "writes": -1}]}),
     "writes"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1, "routes": [{"route": "r", "reads_replica": 1.5}]}),
     "reads_replica"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1, "routes": [{"route": "r", "mode": "SOMETIMES"}]}),
     "unknown consistency mode"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1,
                 "routes": [{"route": "r", "latency_buckets_s": [0.1, 1], "read_replica_hist": [1, 2]}]}),
     "read_replica_hist"),
    (json.dumps({"service": "s", "window_start": 1, "window_s": 1, "replicas": [{"name": "x", "lag_ms_max": -5}],
                 "routes": []}), "lag_ms_max"),
    (None, "no `record`"),
])
def test_bad_records_are_refused_with_a_reason(raw, why):
    with pytest.raises(BadRecord, match=why):
        parse_record(raw)


def test_a_bad_record_changes_nothing_and_different_bucket_bounds_are_refused():
    win = fold(proxy_record(replica=hist(b1=1)))
    before = win.to_json()
    other = proxy_record(replica=hist(b1=1))
    other["routes"][0]["latency_buckets_s"] = [0.5] * 0 + [x * 2 for x in LATENCY_BUCKETS_S]
    with pytest.raises(BadRecord, match="bucket bounds differ"):
        check_compatible(win, parse_record(json.dumps(other)))
    assert win.to_json() == before


def test_latency_saved_estimate_uses_bucket_midpoints():
    bounds = [0.001, 0.01]
    assert hist_mean_s(bounds, [0, 2, 0]) == pytest.approx(0.0055)
    assert hist_mean_s(bounds, [0, 0, 1]) == pytest.approx(0.01)      # +Inf bucket: the last bound
    assert hist_mean_s(bounds, [0, 0, 0]) is None
    assert latency_saved_s(100, 0.0055, 0.0005) == pytest.approx(0.5)
    assert latency_saved_s(100, 0.0005, 0.0055) == 0.0                  # a counter never goes down
    assert latency_saved_s(100, None, 0.0005) == 0.0


def test_settings_defaults_overrides_and_errors(tmp_path):
    s = build_settings("redis://127.0.0.1:6379/0", route_objectives=["svc/*=20", "svc/search=80"],
                       route_stale_budgets={"svc/catalog": 0.05}, floors=["svc/checkout=READ_YOUR_WRITES"])
    assert s.checkpoint == DEFAULT_CHECKPOINT and DEFAULT_CHECKPOINT.parts[-3:] == ("optimizer", "checkpoints",
                                                                                     "default.pt")
    assert (s.window_s, s.settle_s, s.metrics_listen, s.learn, s.epsilon) == (10.0, 2.0, ("127.0.0.1", 9465), True,
                                                                               0.02)
    assert (s.objective_for("svc", "search"), s.objective_for("svc", "x"), s.objective_for("other", "x")) == \
        (80.0, 20.0, 50.0)
    assert (s.stale_budget_for("svc", "catalog"), s.stale_budget_for("svc", "x")) == (0.05, 0.01)
    assert s.floor_for("svc", "checkout") == ModeSpec.parse("READ_YOUR_WRITES")
    assert s.combined_floor("svc", "checkout", ModeSpec.parse("STRONG")) == ModeSpec.parse("STRONG")
    assert s.combined_floor("svc", "checkout", ModeSpec.parse("EVENTUAL")) == ModeSpec.parse("READ_YOUR_WRITES")
    assert s.combined_floor("svc", "x", ModeSpec.parse("BOUNDED:50")) == ModeSpec.parse("BOUNDED:50")
    assert build_settings("redis://h/0", window_s=1, metrics_listen="off").settle_s == 0.5
    assert build_settings("redis://h/0", metrics_listen="off").metrics_listen is None
    bad = [dict(window_s=0), dict(window_s="ten"), dict(epsilon=1.5), dict(stale_budget=-0.1),
           dict(floors=["svc/r=SOMETIMES"]), dict(floors=["nosplit=STRONG"]), dict(route_objectives=["svc/r=-1"]),
           dict(dwell_windows=1.5), dict(metrics_listen="nowhere"), dict(consumer="two words"),
           dict(save_to=DEFAULT_CHECKPOINT.parent), dict(settle_s=math.inf)]
    for kwargs in bad:
        with pytest.raises(ConfigError):
            build_settings("redis://h/0", **kwargs)
    with pytest.raises(ConfigError, match="redis"):
        build_settings("http://nope")
    # Resuming a learning run saves over its own checkpoint, never into the committed directory.
    resumed = build_settings("redis://h/0", checkpoint=tmp_path / "x.pt", save_to=tmp_path, consumer="x")
    assert resumed.save_path == tmp_path / "x.pt"
