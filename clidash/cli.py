"""The `clidash` command line.

Every option also reads an environment variable (CLIDASH_<COMMAND>_<OPTION>,
e.g. CLIDASH_PROXY_PRIMARY) and a `--config FILE` TOML table named after the
command ([proxy]); flags win over env, env over the file.
"""
from __future__ import annotations

import logging
import sys

import click

from .cli_optimizer import optimizer
from .cli_policy import policy
from .config import (AUTH_METHODS, DEFAULT_METRICS_LISTEN, DEFAULT_UDP_LISTEN, PROTOCOLS, ConfigError,
                     build_proxy_config, load_toml_section)


def _load_config_file(ctx: click.Context, _param, path):
    """Eager: the file's table becomes the defaults of the other options."""
    if path:
        try:
            table = load_toml_section(path, ctx.info_name)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
        for key in ("replica", "user", "writing_function"):
            if isinstance(table.get(key + "s"), list) and key not in table:
                table[key] = table.pop(key + "s")
        ctx.default_map = {**(ctx.default_map or {}), **table}
    return path


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
    callback=_load_config_file, help="TOML file; its [<command>] table sets defaults for these options.")


@click.group(context_settings={"auto_envvar_prefix": "CLIDASH", "help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clidash")
def main():
    """CLIDash: consistency-aware database sidecar proxy."""


@main.command()
@config_option
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="postgresql", show_default=True)
@click.option("--listen", metavar="HOST:PORT", help="Default 127.0.0.1:6432 (postgresql), 127.0.0.1:6033 (mysql).")
@click.option("--primary", metavar="DSN", help="postgresql://user:pw@host:port/db of the primary.")
@click.option("--replica", "replicas", metavar="DSN", multiple=True, help="A replica DSN; repeat for more.")
@click.option("--service", default="default", show_default=True, help="Service name when clients send none.")
@click.option("--mode", default="STRONG", show_default=True,
              help="STRONG | READ_YOUR_WRITES | BOUNDED:<ms> | EVENTUAL")
@click.option("--auth-method", type=click.Choice(AUTH_METHODS), default="scram-sha-256", show_default=True,
              help="How clients authenticate to the proxy.")
@click.option("--auth-trust-loopback", is_flag=True, help="Trust clients connecting from loopback.")
@click.option("--user", "users", metavar="NAME=PASSWORD", multiple=True,
              help="A client login; default: the primary DSN's user and password.")
@click.option("--writing-function", "writing_functions", metavar="NAME", multiple=True,
              help="A function with side effects: statements calling it go to the primary.")
@click.option("--health-interval", type=float, default=1.0, show_default=True, help="Replica probe interval (s).")
@click.option("--redis", "redis_url", metavar="URL",
              help="Redis holding the per-route policy (clidash:policy:<service>); without it, --mode everywhere.")
@click.option("--policy-ttl", type=float, default=60.0, show_default=True,
              help="Seconds to keep the last policy while Redis is unreachable, then --mode.")
@click.option("--ryw-wait-ms", type=float, default=0.0, show_default=True,
              help="READ_YOUR_WRITES: wait up to this long for a replica to catch up before using the primary.")
@click.option("--metrics-listen", metavar="HOST:PORT", default=DEFAULT_METRICS_LISTEN, show_default=True,
              help="HTTP listener for /metrics (Prometheus), /livez, /readyz and /startup.")
@click.option("--no-metrics", is_flag=True, help="Run without the metrics and health HTTP listener.")
@click.option("--telemetry-window", type=float, default=1.0, show_default=True,
              help="Seconds per telemetry record XADDed to clidash:telemetry (only with --redis).")
@click.option("--udp-listen", metavar="HOST:PORT", default=DEFAULT_UDP_LISTEN, show_default=True,
              help='UDP listener for application latency events {"svc":..,"op":..,"latency":<ms>}.')
@click.option("--no-udp", is_flag=True, help="Run without the UDP latency event listener.")
@click.option("--audit-rate", type=float, default=0.005, show_default=True,
              help="Share of replica reads re-run on the primary to measure stale reads (0 turns it off).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def proxy(protocol, listen, primary, replicas, service, mode, auth_method, auth_trust_loopback, users,
          writing_functions, health_interval, redis_url, policy_ttl, ryw_wait_ms, metrics_listen, no_metrics,
          telemetry_window, udp_listen, no_udp, audit_rate, log_level):
    """Run the sidecar proxy."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_proxy_config(protocol, listen, primary, replicas, service, mode, auth_method,
                                    auth_trust_loopback, users, writing_functions, health_interval,
                                    redis_url=redis_url, policy_ttl_s=policy_ttl, ryw_wait_ms=ryw_wait_ms,
                                    metrics_listen=None if no_metrics else metrics_listen,
                                    telemetry_window_s=telemetry_window,
                                    udp_listen=None if no_udp else udp_listen, audit_rate=audit_rate)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from clidash.proxy.dsn import DsnError
    from clidash.proxy.http import ListenError
    from clidash.proxy.run import run
    try:
        run(config)
    except DsnError as exc:
        raise click.UsageError(str(exc)) from None
    except NotImplementedError as exc:
        raise click.ClickException(str(exc)) from None
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}") from None


@main.command()
def demo():
    """The whole system on this machine (from a source checkout): throwaway
    primary + standby, the proxy, a mixed workload, per-server counts."""
    import pathlib
    import runpy
    script = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "local" / "demo.py"
    if not script.exists():
        raise click.ClickException("the demo needs a source checkout (deploy/local/demo.py); run `make demo` there")
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")


main.add_command(policy)
main.add_command(optimizer)


@main.command()
@click.option("--url", "urls", metavar="URL", multiple=True,
              help="A proxy's metrics URL; repeat for more. Default http://127.0.0.1:9464/metrics.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between scrapes.")
@click.option("--once", is_flag=True, help="Print one table after two scrapes --interval apart, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the computed rows as JSON instead of a table.")
def top(urls, interval, once, as_json):
    """Live terminal view of proxies' metrics: qps, latency, replica share, fallbacks."""
    from clidash.top import run as run_top
    run_top(urls, interval=interval, once=once, as_json=as_json)
