"""`clidash policy ...`: read and change the consistency policy stored in Redis.

Everything printed here can also be read with plain redis-cli (see README,
"Policy plane"); `--json` gives the same data for scripts.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator, Sequence

import click

from .policy import DEFAULT_ROUTE, ModeSpec, PolicyError, RoutePolicy, ServicePolicy
from .policy_store import (DEFAULT_REDIS_URL, PolicyStoreError, clear_floor, connect, delete_route_policy,
                           describe, history, list_services, read_policy, set_floor, set_route_policy)

OPERATOR = "operator"


class ModeType(click.ParamType):
    """STRONG | READ_YOUR_WRITES | BOUNDED:<ms> | EVENTUAL, as a ModeSpec."""

    name = "MODE"

    def convert(self, value, param, ctx):
        if isinstance(value, ModeSpec):
            return value
        try:
            return ModeSpec.parse(value)
        except PolicyError as exc:
            self.fail(str(exc), param, ctx)


MODE = ModeType()

redis_option = click.option(
    "--redis", "redis_url", metavar="URL", default=DEFAULT_REDIS_URL, show_default=True,
    envvar="CLIDASH_REDIS_URL", help="Redis holding the policy plane (env CLIDASH_REDIS_URL).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextmanager
def _errors() -> Iterator[None]:
    """Store and policy errors become one-line messages with exit status 1, never tracebacks."""
    try:
        yield
    except (PolicyStoreError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None


def _connect(url: str):
    with _errors():
        return connect(url, timeout_s=3.0)


def _echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _route_order(route: str) -> tuple[int, str]:
    return (0 if route == DEFAULT_ROUTE else 1, route)


def _require_stored(policy: ServicePolicy, where: str) -> None:
    if policy.is_empty:
        raise click.ClickException(f"no policy is stored for service {policy.service!r} in {where}; "
                                   f"`clidash policy list` shows the stored services")


@click.group("policy")
def policy():
    """Read and change per-route consistency policies in Redis."""


@policy.command("list")
@redis_option
@json_option
def list_cmd(redis_url, as_json):
    """Services with a stored policy: version, route and floor counts."""
    r = _connect(redis_url)
    with _errors():
        services = list_services(r)
    if as_json:
        _echo_json([vars(s) for s in services])
        return
    if not services:
        click.echo(f"no policies stored in {describe(r)}")
        return
    click.echo(_table(("SERVICE", "VERSION", "ROUTES", "FLOORS"),
                      [(s.service, s.version, s.routes, s.floors) for s in services]))


@policy.command("get")
@click.argument("service")
@redis_option
@json_option
def get_cmd(service, redis_url, as_json):
    """Show SERVICE's routes (`*` = its default) with their modes and floors."""
    r = _connect(redis_url)
    with _errors():
        stored = read_policy(r, service)
    _require_stored(stored, describe(r))
    if as_json:
        invalid = {**stored.invalid_routes, **{f"floor {k}": v for k, v in stored.invalid_floors.items()}}
        _echo_json({"service": service, "version": stored.version,
                    "routes": {k: stored.routes[k].to_dict() for k in sorted(stored.routes, key=_route_order)},
                    "floors": {k: str(stored.floors[k]) for k in sorted(stored.floors, key=_route_order)},
                    "invalid": invalid})
        return
    rows = []
    named = set(stored.routes) | set(stored.invalid_routes) | set(stored.floors) | set(stored.invalid_floors)
    named.discard("_version")
    for route in sorted(named, key=_route_order):
        floor = str(stored.floors[route]) if route in stored.floors else (
            "INVALID" if route in stored.invalid_floors else "")
        entry = stored.routes.get(route)
        if entry is not None:
            lag = "" if entry.max_lag_ms is None else str(entry.spec).partition(":")[2]
            rows.append((route, entry.mode.name, lag, entry.source, entry.reason, entry.updated_at, floor))
        elif route in stored.invalid_routes:
            rows.append((route, "INVALID", "", "", stored.invalid_routes[route], "", floor))
        else:
            rows.append((route, "-", "", "", "", "", floor))
    click.echo(f"{service}: policy version {stored.version}")
    click.echo(_table(("ROUTE", "MODE", "MAX_LAG_MS", "SOURCE", "REASON", "UPDATED_AT", "FLOOR"), rows))
    if "_version" in stored.invalid_routes:
        click.echo(f"warning: _version {stored.invalid_routes['_version']}", err=True)


@policy.command("set")
@click.argument("service")
@click.argument("route")
@click.argument("mode", type=MODE)
@click.option("--reason", default="", help="Why; kept with the policy and in the decisions log.")
@redis_option
@json_option
def set_cmd(service, route, mode, reason, redis_url, as_json):
    """Set ROUTE of SERVICE to MODE (STRONG, READ_YOUR_WRITES, BOUNDED:<ms>, EVENTUAL); ROUTE `*` = default."""
    r = _connect(redis_url)
    entry = RoutePolicy(mode, source=OPERATOR, reason=reason)
    with _errors():
        version = set_route_policy(r, service, route, entry)
    if as_json:
        _echo_json({"service": service, "route": route, "version": version, "policy": entry.to_dict()})
    else:
        click.echo(f"{service} {route}: {mode} (policy version {version})")


@policy.command("unset")
@click.argument("service")
@click.argument("route")
@click.option("--reason", default="", help="Why; kept in the decisions log.")
@redis_option
@json_option
def unset_cmd(service, route, reason, redis_url, as_json):
    """Remove ROUTE's entry from SERVICE's policy: it then follows `*`."""
    r = _connect(redis_url)
    with _errors():
        version = delete_route_policy(r, service, route, source=OPERATOR, reason=reason)
    if version is None:
        raise click.ClickException(f"no policy is stored for {service} {route} in {describe(r)}")
    if as_json:
        _echo_json({"service": service, "route": route, "version": version})
    else:
        click.echo(f"{service} {route}: removed (policy version {version})")


@policy.command("floor")
@click.argument("service")
@click.argument("route")
@click.argument("mode", type=MODE, required=False)
@click.option("--clear", is_flag=True, help="Remove ROUTE's floor instead of setting one.")
@redis_option
@json_option
def floor_cmd(service, route, mode, clear, redis_url, as_json):
    """Set the weakest MODE allowed for ROUTE of SERVICE (`*` = routes without their own), or --clear it."""
    if (mode is None) == (not clear):
        raise click.UsageError("give a MODE to set the floor, or --clear to remove it (not both)")
    r = _connect(redis_url)
    with _errors():
        if clear:
            existed = clear_floor(r, service, route)
            if not existed:
                raise click.ClickException(f"{service} {route} has no floor in {describe(r)}")
        else:
            set_floor(r, service, route, mode)
        stored = read_policy(r, service)
    if as_json:
        _echo_json({"service": service, "route": route, "floor": None if clear else str(mode),
                    "version": stored.version})
        return
    click.echo(f"{service} {route}: {'floor removed' if clear else f'floor {mode}'} "
               f"(policy version {stored.version})")
    current = stored.mode_for(route)
    if not clear and current is not None and stored.effective_mode_for(route, current) != current:
        click.echo(f"note: {route} currently follows {current}, weaker than this floor; proxies serve {mode}")


@policy.command("history")
@click.argument("service")
@click.option("--count", type=click.IntRange(min=1), default=20, show_default=True, help="How many, newest first.")
@redis_option
@json_option
def history_cmd(service, count, redis_url, as_json):
    """SERVICE's last policy changes (clidash:decisions), newest first."""
    r = _connect(redis_url)
    with _errors():
        decisions = history(r, service, count)
        if not decisions:
            _require_stored(read_policy(r, service), describe(r))
    if as_json:
        _echo_json([d.to_dict() for d in decisions])
        return
    if not decisions:
        click.echo(f"no decisions recorded for {service}")
        return
    click.echo(_table(("AT", "ROUTE", "FROM", "TO", "SOURCE", "REASON"),
                      [(d.at, d.route, d.from_mode or "-", d.to_mode or "-", d.source, d.reason)
                       for d in decisions]))
