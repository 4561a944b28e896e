"""The telemetry window diff and record building (proxy/telemetry.py), and the
UDP event parser (proxy/udp.py): no IO."""
import json
from types import SimpleNamespace

from clidash.proxy.stats import LATENCY_BUCKETS_S, StatementStats
from clidash.proxy.telemetry import (build_records, diff_app, diff_statements, snapshot_app,
                                     snapshot_statements, TelemetryExporter)
from clidash.proxy.udp import MAX_DATAGRAM_BYTES, AppLatencyStats

NB = len(LATENCY_BUCKETS_S) + 1
RECORD_KEYS = {"proxy", "service", "protocol", "window_start", "window_s", "policy_version", "replicas", "routes"}
ROUTE_KEYS = {"route", "mode", "reads_primary", "reads_replica", "writes", "errors", "fallbacks",
              "latency_buckets_s", "read_primary_hist", "read_replica_hist", "write_hist",
              "ryw_exposed_reads", "stale_audited", "stale_found"}


def _build(stmt, app=None):
    return build_records(stmt, app or {}, proxy_id="p1", window_start=100.0, window_s=1.0,
                         replicas=[("replica-1", 12.5, True)], policy_version=lambda s: 7,
                         mode_for=lambda s, r: "EVENTUAL")


def test_diff_counts_only_what_happened_since_the_previous_snapshot():
    stats = StatementStats()
    stats.record("svc", "r1", "read", "replica", "eventual", 0.0002, False)
    prev = snapshot_statements(stats.histograms)
    stats.record("svc", "r1", "read", "replica", "eventual", 0.0002, False)
    stats.record("svc", "r1", "read", "primary", "lag", 0.003, True)
    stats.record("svc", "r1", "read", "primary", "lag", 20.0, False)   # +Inf bucket
    d = diff_statements(prev, snapshot_statements(stats.histograms))
    assert set(d) == {("svc", "r1", "read", "replica"), ("svc", "r1", "read", "primary")}
    assert sum(d[("svc", "r1", "read", "replica")].counts) == 1
    primary = d[("svc", "r1", "read", "primary")]
    assert primary.counts[-1] == 1 and sum(primary.counts) == 2
    assert primary.errors == 1 and primary.reasons == {"lag": 2}


def test_an_idle_key_is_left_out_and_an_idle_window_builds_nothing():
    stats = StatementStats()
    stats.record("svc", "r1", "write", "primary", "write", 0.001, False)
    snap = snapshot_statements(stats.histograms)
    assert diff_statements(snap, snapshot_statements(stats.histograms)) == {}
    assert _build({}) == []


def test_records_add_up_per_route_and_have_the_design_shape():
    stats = StatementStats()
    for _ in range(20):
        stats.record("svc", "read_r", "read", "replica", "eventual", 0.0004, False)
    stats.record("svc", "read_r", "read", "primary", "replica_down", 0.002, False)
    stats.record("svc", "read_r", "read", "primary", "ryw", 0.002, False)
    for _ in range(5):
        stats.record("svc", "write_r", "write", "primary", "write", 0.003, False)
    stats.record("svc", "write_r", "other", "primary", "other", 0.001, True)
    stats.record("other-svc", "x", "read", "replica", "eventual", 0.001, False)
    records = _build(diff_statements({}, snapshot_statements(stats.histograms)))
    json.loads(json.dumps(records))   # plain JSON
    assert [r["service"] for r in records] == ["other-svc", "svc"]
    rec = records[1]
    assert set(rec) == RECORD_KEYS
    assert rec["protocol"] == "postgresql" and rec["policy_version"] == 7
    assert rec["replicas"] == [{"name": "replica-1", "lag_ms_max": 12.5, "healthy": True}]
    routes = {r["route"]: r for r in rec["routes"]}
    read, write = routes["read_r"], routes["write_r"]
    assert set(read) == ROUTE_KEYS
    assert (read["reads_replica"], read["reads_primary"], read["writes"]) == (20, 2, 0)
    assert read["fallbacks"] == {"lag": 0, "ryw": 1, "replica_down": 1}
    assert sum(read["read_replica_hist"]) == 20 and len(read["read_replica_hist"]) == NB
    assert read["latency_buckets_s"] == list(LATENCY_BUCKETS_S)
    assert (write["writes"], sum(write["write_hist"]), write["errors"]) == (5, 5, 1)
    assert "app_events" not in write


def test_app_events_join_their_route_as_an_extension():
    app = AppLatencyStats()
    for ms in (45, 45, 3000):
        assert app.feed(json.dumps({"svc": "svc", "op": "checkout", "latency": ms}).encode())
    prev = {}
    d = diff_app(prev, snapshot_app(app.histograms))
    records = _build({}, d)
    route = records[0]["routes"][0]
    assert route["route"] == "checkout" and route["app_events"] == 3
    assert route["app_latency_hist"][LATENCY_BUCKETS_S.index(0.05)] == 2
    assert route["reads_replica"] == 0
    assert diff_app(snapshot_app(app.histograms), snapshot_app(app.histograms)) == {}


def test_exporter_close_window_diffs_the_live_proxy():
    stats = StatementStats()
    proxy = SimpleNamespace(stats=stats, udp=None, replicas=[], watchers={},
                            config=SimpleNamespace(redis_url=None), policy="STRONG",
                            policy_for=lambda s, r: "EVENTUAL")
    exporter = TelemetryExporter(proxy, "redis://unused", "p1", window_s=0.5)
    stats.record("svc", "r", "read", "replica", "eventual", 0.001, False)
    first = exporter.close_window(1.0)
    assert first[0]["routes"][0]["reads_replica"] == 1 and first[0]["routes"][0]["mode"] == "EVENTUAL"
    assert exporter.close_window(1.5) == []
    stats.record("svc", "r", "read", "replica", "eventual", 0.001, False)
    assert exporter.close_window(2.0)[0]["routes"][0]["reads_replica"] == 1


def test_udp_parser_counts_every_kind_of_garbage():
    app = AppLatencyStats(max_operations=2)
    bad = {
        b"not json": "bad_json",
        b"\xff\xfe": "bad_json",
        b"[1, 2]": "bad_field",
        b'{"svc": "a", "op": "b"}': "bad_field",
        b'{"svc": 1, "op": "b", "latency": 1}': "bad_field",
        b'{"svc": "a", "op": "b", "latency": "5"}': "bad_field",
        b'{"svc": "a", "op": "b", "latency": true}': "bad_field",
        b'{"svc": "a", "op": "b", "latency": NaN}': "bad_field",
        json.dumps({"svc": "a" * 129, "op": "b", "latency": 1}).encode(): "bad_field",
        b'{"svc": "a", "op": "b", "latency": -1}': "negative_latency",
        b" " * (MAX_DATAGRAM_BYTES + 1): "oversized",
    }
    for data, reason in bad.items():
        before = app.dropped[reason]
        assert not app.feed(data), data
        assert app.dropped[reason] == before + 1, data
    assert app.histograms == {}
    assert app.feed(b'{"svc": "a", "op": "b", "latency": 0}')
    assert app.feed(b'{"svc": "a", "op": "c", "latency": 1.5}')
    assert not app.feed(b'{"svc": "a", "op": "d", "latency": 1}')
    assert app.dropped["too_many_operations"] == 1
    assert app.histograms[("a", "b")].counts[0] == 1
