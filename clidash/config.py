"""Proxy configuration: one validated object built from flags, env and a TOML file.

Precedence (flags > env > file > defaults) is handled by the CLI; this module
turns the merged values into a ProxyConfig and rejects bad ones with messages
that say what to fix.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from .policy import ModeSpec, PolicyError

PROTOCOLS = ("postgresql", "mysql")
DEFAULT_LISTEN = {"postgresql": "127.0.0.1:6432", "mysql": "127.0.0.1:6033"}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"   # the CLI's default; build_proxy_config's is "off"
DEFAULT_UDP_LISTEN = "127.0.0.1:5775"       # app latency events; the CLI's default, build_proxy_config's is "off"
AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust")


class ConfigError(ValueError):
    """Invalid configuration; the message names the setting."""


@dataclass(frozen=True)
class ProxyConfig:
    protocol: str
    listen_host: str
    listen_port: int
    primary: str
    replicas: tuple[str, ...] = ()
    service: str = "default"
    mode: ModeSpec = field(default_factory=lambda: ModeSpec.parse("STRONG"))
    auth_method: str = "scram-sha-256"
    auth_trust_loopback: bool = False
    users: dict = field(default_factory=dict)          # user -> password; empty: the primary DSN's
    writing_functions: tuple[str, ...] = ()
    max_message_bytes: int = 64 * 1024 * 1024
    health_interval_s: float = 1.0
    hard_lag_cap_ms: float = 30_000.0
    redis_url: str | None = None                       # the policy plane; None: --mode for every route
    policy_ttl_s: float = 60.0                         # keep the last policy this long when Redis is gone
    ryw_wait_ms: float = 0.0                           # hold a READ_YOUR_WRITES read this long for a replica
    metrics_listen: str | None = None                  # HOST:PORT of /metrics and the health checks; None: off
    telemetry_window_s: float = 1.0                    # clidash:telemetry window (only with redis_url)
    udp_listen: str | None = None                      # HOST:PORT of the UDP app latency events; None: off
    audit_rate: float = 0.005                          # share of replica reads re-run on the primary

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics_listen is None else parse_host_port(self.metrics_listen, "metrics_listen")

    @property
    def udp_address(self) -> tuple[str, int] | None:
        return None if self.udp_listen is None else parse_host_port(self.udp_listen, "udp_listen")


def parse_host_port(text: str, setting: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{setting}: port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{setting}: port {number} is out of range")
    return host.strip("[]"), number


def parse_users(items) -> dict:
    users = {}
    for item in items or ():
        name, sep, password = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"user: expected NAME=PASSWORD, got {item.split('=')[0]!r}=...")
        users[name] = password
    return users


def build_proxy_config(protocol: str, listen: str | None, primary: str | None, replicas, service: str,
                       mode: str, auth_method: str = "scram-sha-256", auth_trust_loopback: bool = False,
                       users=(), writing_functions=(), health_interval_s: float = 1.0,
                       hard_lag_cap_ms: float = 30_000.0, max_message_bytes: int = 64 * 1024 * 1024,
                       redis_url: str | None = None, policy_ttl_s: float = 60.0,
                       ryw_wait_ms: float = 0.0, metrics_listen: str | None = None,
                       telemetry_window_s: float = 1.0, udp_listen: str | None = None,
                       audit_rate: float = 0.005) -> ProxyConfig:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if not primary:
        raise ConfigError("primary: a primary DSN is required (--primary or CLIDASH_PROXY_PRIMARY)")
    host, port = parse_host_port(listen or DEFAULT_LISTEN[protocol], "listen")
    try:
        spec = ModeSpec.parse(mode)
    except PolicyError as exc:
        raise ConfigError(f"mode: {exc}") from None
    if auth_method not in AUTH_METHODS:
        raise ConfigError(f"auth_method: expected one of {', '.join(AUTH_METHODS)}, got {auth_method!r}")
    if health_interval_s <= 0:
        raise ConfigError("health_interval: must be > 0 seconds")
    if not 0 <= ryw_wait_ms <= 10_000:
        raise ConfigError("ryw_wait_ms: must be between 0 and 10000")
    if policy_ttl_s < 0:
        raise ConfigError("policy_ttl: must be >= 0 seconds")
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis: expected a redis://, rediss:// or unix:// URL, got {redis_url!r}")
    if metrics_listen is not None:
        if parse_host_port(metrics_listen, "metrics_listen") == (host, port) and port != 0:
            raise ConfigError(f"metrics_listen: {metrics_listen} is also the proxy's listen address")
    if not 0 <= audit_rate <= 1:
        raise ConfigError("audit_rate: must be between 0 and 1")
    if not 0.05 <= telemetry_window_s <= 3600:
        raise ConfigError("telemetry_window: must be between 0.05 and 3600 seconds")
    if udp_listen is not None:
        parse_host_port(udp_listen, "udp_listen")
    if max_message_bytes < 1024:
        raise ConfigError("max_message_bytes: must be at least 1024")
    return ProxyConfig(
        protocol=protocol, listen_host=host, listen_port=port, primary=primary,
        replicas=tuple(replicas or ()), service=service, mode=spec, auth_method=auth_method,
        auth_trust_loopback=auth_trust_loopback, users=parse_users(users),
        writing_functions=tuple(writing_functions or ()), health_interval_s=health_interval_s,
        hard_lag_cap_ms=hard_lag_cap_ms, max_message_bytes=max_message_bytes,
        redis_url=redis_url or None, policy_ttl_s=policy_ttl_s, ryw_wait_ms=ryw_wait_ms,
        metrics_listen=metrics_listen, telemetry_window_s=telemetry_window_s, udp_listen=udp_listen,
        audit_rate=audit_rate,
    )


def load_toml_section(path: str, section: str) -> dict:
    """The [section] table of a TOML config file, with dashes in keys turned into underscores."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return {key.replace("-", "_"): value for key, value in table.items()}
