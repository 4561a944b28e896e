"""The Prometheus collector over a stand-in proxy, and the metrics listener's configuration."""
import math
import socket
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clidash.cli import main
from clidash.config import ConfigError, build_proxy_config
from clidash.policy import ModeSpec
from clidash.proxy.metrics import cumulative_buckets, proxy_registry, render, take_snapshot
from clidash.proxy.routing import PRIMARY, ReplicaView
from clidash.proxy.stats import LATENCY_BUCKETS_S, StatementStats


def fake_proxy(watchers=None):
    stats = StatementStats()
    for seconds in (0.00005, 0.0003, 0.0003, 20.0):
        stats.record("svc", "r1", "read", "replica", "replica", seconds, seconds > 1)
    stats.record("svc", "r1", "read", "primary", "lag", 0.002, False)
    stats.record_fallback("svc", "lag")
    stats.record_error("protocol")
    stats.hints_ignored["svc"] += 2
    clients = [SimpleNamespace(backends={PRIMARY: 1, 0: 2}), SimpleNamespace(backends={PRIMARY: 3})]
    return SimpleNamespace(
        config=SimpleNamespace(protocol="postgresql", service="svc", redis_url=None),
        policy=ModeSpec.parse("EVENTUAL"), policy_for=lambda service, route: ModeSpec.parse("EVENTUAL"),
        stats=stats, clients=clients, watchers=watchers or {},
        replicas=[ReplicaView("replica-1", lag_ms=250.0, lag_bytes=4096), ReplicaView("replica-2", healthy=False)])


def test_each_route_reports_the_mode_it_is_served_in():
    modes = {labels: v for (name, labels), v in scrape(fake_proxy()).items() if name == "clidash_proxy_route_mode"}
    assert modes == {(("mode", "EVENTUAL"), ("route", "r1"), ("service", "svc")): 1.0}


def scrape(proxy):
    out = {}
    for family in text_string_to_metric_families(generate_latest(proxy_registry(proxy)).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))))


def test_cumulative_buckets_end_in_inf_and_count():
    counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
    counts[0], counts[3], counts[-1] = 2, 1, 4
    buckets = cumulative_buckets(counts)
    assert buckets[0] == ("0.0001", 2) and buckets[3] == ("0.001", 3)
    assert buckets[-1] == ("+Inf", 7) and len(buckets) == len(LATENCY_BUCKETS_S) + 1


def test_collector_exports_the_proxy_state():
    m = scrape(fake_proxy())
    labels = dict(db_system_name="postgresql", service="svc", route="r1", target_role="replica", operation="read")
    assert get(m, "db_client_operation_duration_seconds_count", **labels) == 4
    assert get(m, "db_client_operation_duration_seconds_bucket", **labels, le="0.0001") == 1
    assert get(m, "db_client_operation_duration_seconds_bucket", **labels, le="0.0005") == 3
    assert get(m, "db_client_operation_duration_seconds_bucket", **labels, le="10.0") == 3
    assert get(m, "db_client_operation_duration_seconds_bucket", **labels, le="+Inf") == 4
    assert get(m, "db_client_operation_duration_seconds_sum", **labels) == pytest.approx(20.00065)
    assert get(m, "clidash_proxy_statement_errors_total", service="svc", route="r1", target_role="replica",
               operation="read") == 1
    assert get(m, "clidash_proxy_routed_total", service="svc", route="r1", target_role="primary", reason="lag") == 1
    assert get(m, "clidash_proxy_fallbacks_total", service="svc", reason="lag") == 1
    assert get(m, "clidash_proxy_errors_total", kind="protocol") == 1
    assert get(m, "clidash_proxy_hints_ignored_total", service="svc") == 2
    assert get(m, "clidash_proxy_replica_lag_seconds", replica="replica-1") == 0.25
    assert get(m, "clidash_proxy_replica_lag_bytes", replica="replica-1") == 4096
    assert get(m, "clidash_proxy_replica_lag_seconds", replica="replica-2") is None   # unknown: omitted
    assert get(m, "clidash_proxy_replica_healthy", replica="replica-2") == 0
    assert get(m, "clidash_proxy_client_connections") == 2
    assert get(m, "clidash_proxy_backend_connections", role="primary") == 2
    assert get(m, "clidash_proxy_backend_connections", role="replica") == 1
    assert get(m, "clidash_proxy_policy_version", service="svc") == 0
    assert not any(name == "clidash_proxy_policy_age_seconds" for name, _ in m)


def test_policy_version_and_age_come_from_the_watchers():
    watchers = {"svc": SimpleNamespace(version=43, age_s=1.5), "new": SimpleNamespace(version=0, age_s=math.inf)}
    m = scrape(fake_proxy(watchers))
    assert get(m, "clidash_proxy_policy_version", service="svc") == 43
    assert get(m, "clidash_proxy_policy_age_seconds", service="svc") == 1.5
    assert get(m, "clidash_proxy_policy_age_seconds", service="new") == math.inf


def test_a_snapshot_does_not_change_with_the_proxy():
    proxy = fake_proxy()
    snapshot = take_snapshot(proxy)
    before = render(snapshot)
    proxy.stats.record("svc", "r2", "read", "replica", "replica", 0.001, False)
    proxy.stats.histograms[("svc", "r1", "read", "replica")].counts[0] += 5
    assert render(snapshot) == before


def test_metrics_listen_is_validated():
    args = dict(protocol="postgresql", listen="127.0.0.1:6432", primary="postgresql://u:p@h/db", replicas=(),
                service="s", mode="EVENTUAL")
    assert build_proxy_config(**args).metrics_listen is None
    assert build_proxy_config(**args, metrics_listen="[::1]:9464").metrics_address == ("::1", 9464)
    with pytest.raises(ConfigError, match="metrics_listen"):
        build_proxy_config(**args, metrics_listen="9464")
    with pytest.raises(ConfigError, match="also the proxy's listen address"):
        build_proxy_config(**args, metrics_listen="127.0.0.1:6432")


def test_cli_defaults_to_9464_and_no_metrics_turns_it_off(monkeypatch):
    import clidash.proxy.run as run_module
    seen = []
    monkeypatch.setattr(run_module, "run", seen.append)
    base = ["proxy", "--primary", "postgresql://u:p@127.0.0.1:1/db"]
    assert CliRunner().invoke(main, base).exit_code == 0
    assert CliRunner().invoke(main, base + ["--metrics-listen", "0.0.0.0:9999"]).exit_code == 0
    assert CliRunner().invoke(main, base + ["--no-metrics"]).exit_code == 0
    assert [c.metrics_listen for c in seen] == ["127.0.0.1:9464", "0.0.0.0:9999", None]


def test_cli_names_a_taken_metrics_port(monkeypatch):
    import clidash.proxy.run as run_module
    monkeypatch.setattr(run_module, "install_event_loop_policy", lambda: "asyncio")   # keep pytest's loops
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["proxy", "--primary", "postgresql://u:p@127.0.0.1:1/db",
                                           "--listen", "127.0.0.1:0", "--metrics-listen", f"127.0.0.1:{port}"])
    assert result.exit_code == 1, result.output
    assert f"cannot listen for metrics and health on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
