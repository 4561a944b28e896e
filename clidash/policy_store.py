"""Read and write the policy plane in Redis (synchronous, redis-py): for the CLI and the optimizer.

Every change is one MULTI/EXEC under WATCH: the route field, the `_version`
increment, the `clidash:decisions` entry and the `clidash:policy-changed` hint go
together or not at all, and a concurrent change (including a floor change) makes
the transaction retry instead of being overwritten blindly.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .policy import (DEFAULT_ROUTE, VERSION_FIELD, ModeSpec, PolicyError, RoutePolicy, ServicePolicy,
                     is_weaker, rfc3339_now)
from .redis_keys import (DECISIONS_MAXLEN, DECISIONS_STREAM, FLOOR_PREFIX, POLICY_CHANGED, POLICY_PREFIX,
                         floor_key, policy_key, redact_url, service_from_key)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TRANSACTION_ATTEMPTS = 20
HISTORY_PAGE = 500


class PolicyStoreError(RuntimeError):
    """Redis could not be used (unreachable, refused, wrong data type, contention); the message says which."""


# --------------------------------------------------------------------------- connection and errors


def connect(url: str = DEFAULT_REDIS_URL, timeout_s: float = 5.0) -> redis.Redis:
    """A client that fails fast (no silent retries) and returns str, not bytes."""
    try:
        return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout_s,
                                    socket_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise PolicyStoreError(f"bad Redis URL {redact_url(url)!r}: {exc}") from None


def describe(r: redis.Redis) -> str:
    """Where `r` points, without credentials: redis://host:port/db."""
    kwargs = r.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{db}"


@contextmanager
def _redis_errors(r: redis.Redis, doing: str) -> Iterator[None]:
    where = describe(r)
    try:
        yield
    except redis.AuthenticationError as exc:
        raise PolicyStoreError(f"Redis at {where} refused the credentials while {doing}: {exc}") from None
    except redis.TimeoutError:
        raise PolicyStoreError(f"Redis at {where} did not answer in time while {doing}") from None
    except redis.ConnectionError as exc:
        raise PolicyStoreError(f"cannot reach Redis at {where} ({exc})") from None
    except redis.RedisError as exc:
        raise PolicyStoreError(f"Redis at {where} failed while {doing}: {exc}") from None


def _check_names(service: str, route: str | None = None) -> None:
    if not service or any(ch in service for ch in "\r\n\0"):
        raise PolicyError(f"service name must be non-empty text on one line (got {service!r})")
    if route is not None:
        if not route or any(ch in route for ch in "\r\n\0"):
            raise PolicyError(f"route must be non-empty text on one line (got {route!r}); `*` is the service default")
        if route == VERSION_FIELD:
            raise PolicyError(f"{VERSION_FIELD!r} is the policy hash's version field, not a route")


def _version_of(raw: str | None, service: str) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        raise PolicyStoreError(f"{policy_key(service)} field {VERSION_FIELD} is not an integer ({raw!r}); "
                               f"fix it with redis-cli before changing the policy") from None


def _transact(r: redis.Redis, watch: tuple[str, ...], body: Callable[[Any], Any], doing: str) -> tuple[Any, list]:
    """Run `body(pipe)` under WATCH: it reads (immediate mode), calls pipe.multi() and queues writes.

    Returns (whatever body returned, EXEC results); retries when a watched key changed.
    """
    with _redis_errors(r, doing), r.pipeline() as pipe:
        for _ in range(TRANSACTION_ATTEMPTS):
            try:
                pipe.watch(*watch)
                prepared = body(pipe)
                if prepared is None:  # nothing to write
                    pipe.reset()
                    return None, []
                return prepared, pipe.execute()
            except redis.WatchError:
                continue
        raise PolicyStoreError(f"gave up {doing} after {TRANSACTION_ATTEMPTS} attempts: "
                               f"the policy kept changing underneath")


def _announce(pipe: Any, service: str, version: int) -> None:
    pipe.publish(POLICY_CHANGED, json.dumps({"service": service, "version": version}, separators=(",", ":")))


def _log_decision(pipe: Any, service: str, route: str, before: str, after: str, source: str, reason: str,
                  version: int, at: str, extra: Mapping[str, Any] | None) -> None:
    entry = {"service": service, "route": route, "from": before, "to": after, "reason": reason,
             "source": source, "at": at, "version": str(version)}
    for key, value in (extra or {}).items():  # the optimizer's q_values, reward, model_version
        entry.setdefault(key, value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
    pipe.xadd(DECISIONS_STREAM, entry, maxlen=DECISIONS_MAXLEN, approximate=True)


def _mode_text(raw: str | None) -> str:
    """A stored route value as a mode string for the decisions log ('' when none)."""
    if raw is None:
        return ""
    try:
        return str(RoutePolicy.from_json(raw).spec)
    except PolicyError:
        return "INVALID"


# --------------------------------------------------------------------------- policy


def read_policy(r: redis.Redis, service: str) -> ServicePolicy:
    """The service's routes, floors and version in one consistent read (MULTI)."""
    _check_names(service)
    with _redis_errors(r, f"reading the policy of {service!r}"):
        pipe = r.pipeline(transaction=True)
        pipe.hgetall(policy_key(service))
        pipe.hgetall(floor_key(service))
        policy_hash, floor_hash = pipe.execute()
    return ServicePolicy.from_hashes(service, policy_hash, floor_hash)


def set_route_policy(r: redis.Redis, service: str, route: str, policy: RoutePolicy,
                     extra: Mapping[str, Any] | None = None) -> int:
    """Store `policy` for `route` (`*` = service default); returns the new `_version`.

    Refused with PolicyError when `policy` is weaker than the route's floor.
    `extra` adds fields to the decisions entry (q_values, reward, model_version).
    """
    _check_names(service, route)
    pkey, fkey = policy_key(service), floor_key(service)

    def body(pipe):
        floor = ServicePolicy.from_hashes(service, {}, pipe.hgetall(fkey)).floor_for(route)
        if floor is not None and is_weaker(policy.spec, floor):
            raise PolicyError(f"{service} {route}: {policy.spec} is weaker than the floor {floor}; "
                              f"choose {floor} or stronger, or lower the floor first")
        before, raw_version = pipe.hmget(pkey, route, VERSION_FIELD)
        version = _version_of(raw_version, service) + 1
        pipe.multi()
        pipe.hset(pkey, route, policy.to_json())
        pipe.hincrby(pkey, VERSION_FIELD, 1)
        _log_decision(pipe, service, route, _mode_text(before), str(policy.spec), policy.source, policy.reason,
                      version, policy.updated_at, extra)
        _announce(pipe, service, version)
        return version

    version, _ = _transact(r, (pkey, fkey), body, f"setting {service} {route}")
    return version


def log_decision(r: redis.Redis, service: str, route: str, from_mode: str, to_mode: str, *, source: str,
                 reason: str, version: int, extra: Mapping[str, Any] | None = None) -> None:
    """XADD one `clidash:decisions` entry without changing the policy, e.g. a proposal the
    optimizer's guardrails held back (from == to); same fields as a change's entry."""
    _check_names(service, route)
    with _redis_errors(r, "logging a decision"):
        pipe = r.pipeline(transaction=False)
        _log_decision(pipe, service, route, from_mode, to_mode, source, reason, version, rfc3339_now(), extra)
        pipe.execute()


def delete_route_policy(r: redis.Redis, service: str, route: str, source: str = "operator",
                        reason: str = "") -> int | None:
    """Remove `route`'s entry (it falls back to `*`); returns the new version, None when nothing was stored."""
    _check_names(service, route)
    pkey = policy_key(service)

    def body(pipe):
        before, raw_version = pipe.hmget(pkey, route, VERSION_FIELD)
        if before is None:
            return None
        version = _version_of(raw_version, service) + 1
        pipe.multi()
        pipe.hdel(pkey, route)
        pipe.hincrby(pkey, VERSION_FIELD, 1)
        _log_decision(pipe, service, route, _mode_text(before), "", source, reason, version, rfc3339_now(), None)
        _announce(pipe, service, version)
        return version

    version, _ = _transact(r, (pkey,), body, f"deleting {service} {route}")
    return version


# --------------------------------------------------------------------------- floors


def read_floors(r: redis.Redis, service: str) -> dict[str, ModeSpec]:
    """route -> weakest mode allowed; an unreadable floor reads as STRONG, as proxies enforce it."""
    policy = read_policy(r, service)
    floors = dict(policy.floors)
    for route in policy.invalid_floors:
        floors[route] = policy.floor_for(route)
    return floors


def _change_floor(r: redis.Redis, service: str, route: str, spec: ModeSpec | None) -> int | None:
    # A floor change bumps the policy's `_version` and publishes, so proxies pick it up
    # through the same path as a policy change.
    _check_names(service, route)
    pkey, fkey = policy_key(service), floor_key(service)

    def body(pipe):
        if spec is None and not pipe.hexists(fkey, route):
            return None
        version = _version_of(pipe.hget(pkey, VERSION_FIELD), service) + 1
        pipe.multi()
        if spec is None:
            pipe.hdel(fkey, route)
        else:
            pipe.hset(fkey, route, str(spec))
        pipe.hincrby(pkey, VERSION_FIELD, 1)
        _announce(pipe, service, version)
        return version

    version, _ = _transact(r, (pkey, fkey), body, f"changing the floor of {service} {route}")
    return version


def set_floor(r: redis.Redis, service: str, route: str, spec: ModeSpec) -> int:
    """Set `route`'s floor (`*` = every route without its own); returns the new policy version.

    A stored policy weaker than the new floor stays stored but is never served below it.
    """
    return _change_floor(r, service, route, spec)


def clear_floor(r: redis.Redis, service: str, route: str) -> bool:
    """Remove `route`'s floor; False when it had none."""
    return _change_floor(r, service, route, None) is not None


# --------------------------------------------------------------------------- history and listing


@dataclass(frozen=True)
class Decision:
    """One `clidash:decisions` entry."""

    id: str
    service: str
    route: str
    from_mode: str
    to_mode: str
    reason: str
    source: str
    at: str
    extra: dict[str, str] = field(default_factory=dict)  # version, q_values, reward, model_version, ...

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> "Decision":
        known = ("service", "route", "from", "to", "reason", "source", "at")
        return cls(entry_id, *(fields.get(k, "") for k in known),
                   extra={k: v for k, v in fields.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "route": self.route, "from": self.from_mode,
                "to": self.to_mode, "reason": self.reason, "source": self.source, "at": self.at, **self.extra}


def history(r: redis.Redis, service: str, count: int = 20) -> list[Decision]:
    """The service's last `count` decisions, newest first (the stream is shared, so filter while paging)."""
    _check_names(service)
    found: list[Decision] = []
    upper = "+"
    with _redis_errors(r, "reading the decisions stream"):
        while len(found) < count:
            page = r.xrevrange(DECISIONS_STREAM, max=upper, min="-", count=HISTORY_PAGE)
            for entry_id, fields in page:
                if fields.get("service") == service:
                    found.append(Decision.from_entry(entry_id, fields))
                    if len(found) == count:
                        break
            if len(page) < HISTORY_PAGE:
                break
            upper = "(" + page[-1][0]
    return found


@dataclass(frozen=True)
class ServiceSummary:
    service: str
    version: int
    routes: int
    floors: int


def list_services(r: redis.Redis) -> list[ServiceSummary]:
    """Every service with a policy or floor hash, sorted by name."""
    with _redis_errors(r, "listing services"):
        names = set()
        for prefix in (POLICY_PREFIX, FLOOR_PREFIX):
            for key in r.scan_iter(match=prefix + "*", count=500, _type="hash"):
                names.add(service_from_key(key))
        services = sorted(names)
        pipe = r.pipeline(transaction=False)
        for service in services:
            pipe.hget(policy_key(service), VERSION_FIELD)
            pipe.hlen(policy_key(service))
            pipe.hlen(floor_key(service))
        replies = pipe.execute()
    summaries = []
    for i, service in enumerate(services):
        raw_version, fields, floors = replies[3 * i: 3 * i + 3]
        try:
            version = int(raw_version or 0)
        except ValueError:
            version = -1  # shown as-is; `get` explains
        routes = fields - (raw_version is not None)
        summaries.append(ServiceSummary(service, version, routes, floors))
    return summaries


__all__ = ["DEFAULT_REDIS_URL", "DEFAULT_ROUTE", "Decision", "PolicyStoreError", "ServiceSummary", "clear_floor",
           "connect", "delete_route_policy", "describe", "history", "list_services", "log_decision", "read_floors",
           "read_policy", "set_floor", "set_route_policy"]
