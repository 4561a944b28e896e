"""The proxy's view of the policy plane: follows one service's policy in Redis and
answers `mode_for(route)` from memory, with no awaits, on the hot path.

Protocol (DESIGN section 5): SUBSCRIBE to `clidash:policy-changed` first, then read
the policy and floor hashes, so no change can slip between the read and the
subscription; re-read on a hint whose version is newer than ours, after every
reconnect, and whenever the `_version` poll (the safety net for lost hints)
disagrees. All reads run in one task, so each snapshot is at least as new as the
one before and can be applied as read.

Redis down: keep the last policy (state "stale") for `fail_static_ttl_s`, then
serve `default` for every route (state "default") until Redis answers again.
Floors only ever strengthen a mode, so the last floors seen stay applied even
in "default".
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from clidash.policy import ModeSpec, ServicePolicy, VERSION_FIELD, rfc3339_now
from clidash.redis_keys import POLICY_CHANGED, PROXIES_KEY, floor_key, policy_key, redact_url

log = logging.getLogger("clidash.proxy.policy")

LIVE, STALE, DEFAULT = "live", "stale", "default"
MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 1.0      # reconnect attempts never wait longer: recovery is fast
COMMAND_TIMEOUT_S = 1.0  # a Redis that accepts TCP but does not answer counts as down
START_WAIT_S = 2.0       # start() waits this long for the first read before serving the default


class PolicyWatcherError(ValueError):
    """The watcher was configured with something unusable (bad URL, bad interval)."""


class PolicyWatcher:
    def __init__(self, redis_url: str, service: str, default: ModeSpec, proxy_id: str,
                 fail_static_ttl_s: float = 60.0, poll_interval_s: float = 1.0):
        if poll_interval_s <= 0:
            raise PolicyWatcherError(f"poll_interval_s must be > 0 (got {poll_interval_s})")
        if fail_static_ttl_s < 0:
            raise PolicyWatcherError(f"fail_static_ttl_s must be >= 0 (got {fail_static_ttl_s})")
        try:
            aioredis.ConnectionPool.from_url(redis_url)  # validates the URL; connects nothing
        except ValueError as exc:
            raise PolicyWatcherError(f"bad Redis URL {redact_url(redis_url)!r}: {exc}") from None
        self.redis_url = redis_url
        self._where = redact_url(redis_url)
        self.service = service
        self.default = default
        self.proxy_id = proxy_id
        self.fail_static_ttl_s = fail_static_ttl_s
        self.poll_interval_s = poll_interval_s
        self._policy_key = policy_key(service)
        self._floor_key = floor_key(service)
        self._policy = ServicePolicy(service)
        self._compiled = self._policy.compile(default)
        self._state = DEFAULT
        self._session_live = False
        self._raw_floors: dict[str, str] = {}
        self._last_ok: float | None = None
        self._outage_since: float | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._first_attempt: asyncio.Event | None = None
        self._report_refused = False
        self._warned_invalid: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ hot path (no awaits, O(1))

    def mode_for(self, route: str) -> ModeSpec:
        """The mode to serve `route` with now, never weaker than its floor."""
        compiled = self._compiled  # one attribute read: a concurrent apply swaps it whole
        return compiled.table.get(route, compiled.fallback)

    @property
    def version(self) -> int:
        """The applied policy's `_version`; 0 while serving the default."""
        return self._policy.version

    @property
    def state(self) -> str:
        """"live" (following Redis), "stale" (Redis down, within the TTL) or "default"."""
        return self._state

    @property
    def age_s(self) -> float:
        """Seconds since Redis last answered (inf if it never has)."""
        return math.inf if self._last_ok is None else time.monotonic() - self._last_ok

    @property
    def policy(self) -> ServicePolicy:
        """The applied snapshot (floors only, version 0, in "default")."""
        return self._policy

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Begin following Redis; returns after the first read or START_WAIT_S, whichever is first."""
        if self._task is not None:
            return
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._supervise(), name=f"policy-watcher:{self.service}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), START_WAIT_S)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=2 * CLOSE_TIMEOUT_S)
        self._cancel_expiry()
        await self._withdraw_report()

    # ------------------------------------------------------------------ the loop

    async def _supervise(self) -> None:
        backoff = MIN_BACKOFF_S
        while True:
            self._session_live = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nothing Redis does may reach the proxy
                self._on_failure(exc)
            self._first_attempt.set()
            if self._session_live:
                backoff = MIN_BACKOFF_S
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _session(self) -> None:
        """One connection's life: subscribe, read, then hints and polls until something fails."""
        client = aioredis.Redis.from_url(
            self.redis_url, decode_responses=True, socket_connect_timeout=COMMAND_TIMEOUT_S,
            socket_timeout=COMMAND_TIMEOUT_S, retry=Retry(NoBackoff(), 0), health_check_interval=0)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(POLICY_CHANGED)
            await self._confirm_subscribed(pubsub)
            await self._refresh(client, reconnected=True)
            self._session_live = True
            self._first_attempt.set()
            next_poll = time.monotonic() + self.poll_interval_s
            while True:
                wait = next_poll - time.monotonic()
                if wait > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if message is not None and self._is_newer_hint(message.get("data")):
                        await self._refresh(client)
                    continue
                await self._poll(client)
                next_poll = time.monotonic() + self.poll_interval_s
        finally:
            # Bounded: redis-py's aclose can wait forever on a connection whose
            # read was cancelled mid-reply, and close() must always return.
            await _bounded(pubsub.aclose())
            await _bounded(client.aclose())

    async def _confirm_subscribed(self, pubsub) -> None:
        # Only once Redis confirms the subscription is it safe to read the hash.
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            message = await pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "subscribe":
                return
        raise TimeoutError(f"no confirmation of SUBSCRIBE {POLICY_CHANGED} within {COMMAND_TIMEOUT_S}s")

    def _is_newer_hint(self, data) -> bool:
        try:
            hint = json.loads(data)
        except (TypeError, ValueError):
            return False
        if not isinstance(hint, dict) or hint.get("service") != self.service:
            return False
        version = hint.get("version")
        # A hint is only a hint: if its version is unreadable, re-reading costs one round trip.
        return not isinstance(version, int) or version > self._policy.version

    async def _refresh(self, client, reconnected: bool = False) -> None:
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(self._policy_key)
        pipe.hgetall(self._floor_key)
        policy_hash, floor_hash = await pipe.execute()
        self._last_ok = time.monotonic()
        snapshot = ServicePolicy.from_hashes(self.service, policy_hash, floor_hash)
        self._raw_floors = floor_hash
        if reconnected or snapshot != self._policy:
            if snapshot.version < self._policy.version and self._state == LIVE:
                log.warning("policy of %s went back from v%d to v%d: Redis lost or reset it; applying what it holds",
                            self.service, self._policy.version, snapshot.version)
            self._apply(snapshot)
        self._back_online()
        await self._report(client)

    async def _poll(self, client) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hget(self._policy_key, VERSION_FIELD)
        pipe.hgetall(self._floor_key)
        pipe.hset(PROXIES_KEY, self.proxy_id, self._report_value())
        raw_version, floor_hash, reported = await pipe.execute(raise_on_error=False)
        for reply in (raw_version, floor_hash):
            if isinstance(reply, Exception):
                raise reply
        self._last_ok = time.monotonic()
        self._note_report_result(reported)
        try:
            version = int(raw_version or 0)
        except ValueError:
            version = -1  # unreadable: re-read, and the snapshot records why
        if version != self._policy.version or floor_hash != self._raw_floors:
            await self._refresh(client)

    # ------------------------------------------------------------------ state changes

    def _apply(self, snapshot: ServicePolicy) -> None:
        self._compiled = snapshot.compile(self.default)
        self._policy = snapshot
        if snapshot.version:
            log.info("policy of %s: applied v%d (%d route(s), %d floor(s))", self.service, snapshot.version,
                     len(snapshot.routes), len(snapshot.floors))
        for kind, problems in (("route", snapshot.invalid_routes), ("floor", snapshot.invalid_floors)):
            for route, why in problems.items():
                if (route, why) not in self._warned_invalid:
                    self._warned_invalid.add((route, why))
                    log.warning("policy of %s: %s %r is unreadable, serving it STRONG: %s",
                                self.service, kind, route, why)

    def _back_online(self) -> None:
        self._cancel_expiry()
        if self._outage_since is not None:
            log.info("policy plane: Redis at %s is back after %.1fs; %s follows policy v%d",
                        self._where, time.monotonic() - self._outage_since, self.service, self._policy.version)
            self._outage_since = None
        self._state = LIVE

    def _on_failure(self, exc: Exception) -> None:
        first = self._outage_since is None
        if first:
            self._outage_since = time.monotonic()
        if self._state == LIVE:
            self._state = STALE
            left = max(0.0, self.fail_static_ttl_s - self.age_s)
            self._expiry = asyncio.get_running_loop().call_later(left, self._expire)
            if first:
                log.warning("policy plane: Redis at %s unavailable (%s: %s); keeping policy v%d of %s for %gs "
                            "(fail static), then the default %s", self._where, type(exc).__name__, exc,
                            self._policy.version, self.service, round(left, 1), self.default)
        elif first:
            log.warning("policy plane: Redis at %s unavailable (%s: %s); serving the default %s for %s until "
                        "it answers", self._where, type(exc).__name__, exc, self.default, self.service)
        log.debug("policy plane: attempt failed: %s: %s", type(exc).__name__, exc)

    def _expire(self) -> None:
        self._expiry = None
        if self._state != STALE:
            return
        self._state = DEFAULT
        self._apply(self._policy.floors_only())
        log.warning("policy plane: no answer from Redis for %gs; %s now serves the default %s on every route "
                    "(floors still apply) until Redis is back", self.fail_static_ttl_s, self.service, self.default)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    # ------------------------------------------------------------------ clidash:proxies

    def _report_value(self) -> str:
        return json.dumps({"service": self.service, "policy_version": self._policy.version,
                           "last_seen": rfc3339_now()}, separators=(",", ":"))

    def _note_report_result(self, reply) -> None:
        # A proxy user without write access must still follow the policy: log once, carry on.
        if isinstance(reply, ResponseError):
            if not self._report_refused:
                self._report_refused = True
                log.warning("policy plane: cannot report to %s (%s); following the policy anyway", PROXIES_KEY, reply)
        elif isinstance(reply, Exception):
            raise reply

    async def _report(self, client) -> None:
        try:
            reply = await client.hset(PROXIES_KEY, self.proxy_id, self._report_value())
        except ResponseError as exc:
            reply = exc
        self._note_report_result(reply)

    async def _withdraw_report(self) -> None:
        """Best effort on close: a proxy that stopped cleanly leaves no stale entry."""
        client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5,
                                         retry=Retry(NoBackoff(), 0))
        try:
            await _bounded(client.hdel(PROXIES_KEY, self.proxy_id))
        finally:
            await _bounded(client.aclose())


CLOSE_TIMEOUT_S = 1.0


async def _bounded(awaitable) -> None:
    """Await a best-effort cleanup step for at most CLOSE_TIMEOUT_S, swallowing errors."""
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(awaitable, CLOSE_TIMEOUT_S)
