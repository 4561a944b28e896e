"""Statement statistics and configuration/CLI validation."""
import pytest
from click.testing import CliRunner

from clidash.cli import main
from clidash.config import ConfigError, build_proxy_config, parse_host_port
from clidash.proxy.stats import LATENCY_BUCKETS_S, OTHER_ROUTE, StatementStats


def test_histogram_buckets_are_inclusive_upper_bounds():
    stats = StatementStats()
    for seconds in (0.00005, 0.0001, 0.0002, 20.0):
        stats.record("svc", "q_1", "read", "replica", "replica", seconds, False)
    hist = stats.histograms[("svc", "q_1", "read", "replica")]
    assert hist.counts[0] == 2                       # <= 0.0001
    assert hist.counts[1] == 1                       # <= 0.00025
    assert hist.counts[len(LATENCY_BUCKETS_S)] == 1  # +Inf
    assert hist.count == 4 and hist.reasons == {"replica": 4}


def test_routes_past_the_cap_fold_into_other_and_are_counted():
    stats = StatementStats(max_routes_per_service=2)
    for route in ("a", "b", "c", "d", "c"):
        stats.record("svc", route, "read", "primary", "mode_strong", 0.001, route == "d")
    keys = set(stats.histograms)
    assert keys == {("svc", "a", "read", "primary"), ("svc", "b", "read", "primary"),
                    ("svc", OTHER_ROUTE, "read", "primary")}
    other = stats.histograms[("svc", OTHER_ROUTE, "read", "primary")]
    assert other.count == 3 and other.errors == 1
    assert stats.routes_overflowed["svc"] == 2
    stats.record("other-svc", "x", "read", "primary", "mode_strong", 0.001, False)
    assert ("other-svc", "x", "read", "primary") in stats.histograms   # caps are per service


@pytest.mark.parametrize("kwargs, message", [
    (dict(protocol="db2"), "protocol"),
    (dict(primary=None), "primary"),
    (dict(listen="nohost"), "HOST:PORT"),
    (dict(listen="127.0.0.1:99999"), "out of range"),
    (dict(mode="FAST"), "unknown consistency mode"),
    (dict(mode="BOUNDED"), "BOUNDED needs a lag bound"),
    (dict(auth_method="kerberos"), "auth_method"),
    (dict(users=["nopassword"]), "NAME=PASSWORD"),
])
def test_bad_config_is_rejected_with_a_clear_message(kwargs, message):
    args = dict(protocol="postgresql", listen=None, primary="postgresql://u:p@h/db", replicas=(),
                service="s", mode="EVENTUAL")
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        build_proxy_config(**args)


def test_host_port_parsing():
    assert parse_host_port("127.0.0.1:6432", "listen") == ("127.0.0.1", 6432)
    assert parse_host_port("[::1]:6432", "listen") == ("::1", 6432)


def test_cli_rejects_bad_arguments_without_a_traceback():
    runner = CliRunner()
    result = runner.invoke(main, ["proxy", "--primary", "postgresql://u:p@127.0.0.1:1/db", "--mode", "FAST"])
    assert result.exit_code == 2 and "unknown consistency mode" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["proxy", "--primary", "mysql2://x", "--listen", "127.0.0.1:0"])
    assert result.exit_code != 0 and "unsupported DSN scheme" in result.output


def test_flags_win_over_env_over_file(tmp_path, monkeypatch):
    config = tmp_path / "clidash.toml"
    config.write_text('[proxy]\nprimary = "postgresql://u:p@127.0.0.1:1/db"\nmode = "STRONG"\n'
                      'service = "from-file"\nlisten = "127.0.0.1:7000"\n')
    seen = {}
    import clidash.proxy.run as run_module
    monkeypatch.setattr(run_module, "run", lambda cfg: seen.update(cfg=cfg))
    monkeypatch.setenv("CLIDASH_PROXY_SERVICE", "from-env")
    monkeypatch.setenv("CLIDASH_PROXY_MODE", "EVENTUAL")
    result = CliRunner().invoke(main, ["proxy", "--config", str(config), "--mode", "BOUNDED:50"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.service, str(cfg.mode), cfg.listen_port) == ("from-env", "BOUNDED:50", 7000)
