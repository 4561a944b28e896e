"""The live optimizer's loop: read telemetry, share partial windows, decide owned services.

One iteration (`step`):
  1. read a batch as consumer `settings.consumer` (blocking at most until the next
     decision is due, and never more than 1 s); once per window also XAUTOCLAIM
     entries other consumers left pending for more than 2 windows;
  2. fold it per (service, window) and flush each partial with the XACK of its
     entries (sharing.Sharing.flush); ask for the lease of every service seen;
  3. when a window's decision time has come ((k + 1) x window + settle), renew
     leases, seal and merge every owned service's windows since the last decision,
     and decide them all in one Controller call (decide.Decider).

Redis errors never end the loop: they are logged once per outage, the iteration
is retried with a backoff, and own pending entries are re-read afterwards.
Proxies fail static on their own meanwhile.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import redis

from clidash.policy_store import PolicyStoreError, connect, describe

from ..agent import DQNAgent
from ..controller import Controller
from ..guardrails import Guardrails
from .aggregate import BadRecord, ServiceWindow, check_compatible, parse_record
from .decide import Decider, WindowToDecide
from .intake import Entry, TelemetryIntake, ensure_group
from .metrics import OptimizerMetrics
from .settings import OptimizerSettings
from .sharing import Sharing

log = logging.getLogger("clidash.optimizer.live")

IDLE_WINDOWS_BEFORE_RELEASE = 6     # an owned service with no telemetry this long is let go
BAD_RECORD_LOG_EVERY_S = 60.0
MAX_WINDOWS_MERGED = 3


def model_version_of(path: Path) -> str:
    """`<file name>@<sha256[:12]>`: which checkpoint decided, readable in the decisions log."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    return f"{Path(path).name}@{digest}"


@dataclass(frozen=True)
class DecidedWindow:
    """What this process decided, for logs and tests: (service, windows) and the merged totals."""

    service: str
    windows: tuple[int, ...]
    records: int
    counts: dict


class LiveOptimizer:
    def __init__(self, settings: OptimizerSettings, agent: DQNAgent, model_version: str,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.agent = agent
        self.base_model_version = model_version
        self.clock = clock
        self.r = connect(settings.redis_url, timeout_s=max(5.0, settings.window_s))
        self.where = describe(self.r)
        self.metrics = OptimizerMetrics(settings.max_routes_per_service, model_version)
        guardrails = Guardrails(dwell_windows=settings.dwell_windows,
                                max_changes_per_window=settings.max_changes_per_window,
                                stale_tripwire=settings.stale_tripwire, freeze_windows=settings.freeze_windows)
        self.controller = Controller(agent, guardrails, learn=settings.learn, explore=True,
                                     epsilon=settings.epsilon)
        window_ms = int(settings.window_s * 1000)
        self.intake = TelemetryIntake(self.r, settings.consumer, claim_idle_ms=2 * window_ms)
        self.sharing = Sharing(self.r, settings.consumer, partial_ttl_ms=settings.partial_ttl_ms,
                               lease_ms=settings.lease_ms)
        self.decider = Decider(self.r, self.controller, settings, self.metrics, self.model_version)
        self.partials: dict[tuple[str, int], ServiceWindow] = {}    # what this process flushed so far
        self.owned: dict[str, int] = {}                              # service -> windows without telemetry
        self.history: deque[DecidedWindow] = deque(maxlen=1000)
        self._lease_tried: dict[str, int] = {}
        self._routes_decided: dict[str, set[str]] = {}
        self._last_decided: int | None = None
        self._last_claim: int | None = None
        self._ready = False
        self._outage_since: float | None = None
        self._bad_logged_at = 0.0
        self._train_updates_seen = 0
        self._windows_since_save = 0
        self.metrics_server = None

    # ------------------------------------------------------------------ windows and clock

    def model_version(self) -> str:
        n = self.controller.train_updates
        return self.base_model_version if not n else f"{self.base_model_version}+{n}updates"

    def _window_of(self, record: dict, now: float) -> tuple[int, bool]:
        """(window, moved): the window holding the record's midpoint, or the current one when
        that window has already closed here (late) or lies beyond the next (clock skew)."""
        w = self.settings.window_s
        k = math.floor((record["window_start"] + record["window_s"] / 2) / w)
        k_now = math.floor(now / w)
        if k < math.floor((now - self.settings.settle_s) / w) or k > k_now + 1:
            return k_now, True
        return k, False

    def _due_window(self, now: float) -> int:
        """The newest window whose decision time ((k + 1) x window + settle) has passed."""
        return math.floor((now - self.settings.settle_s) / self.settings.window_s) - 1

    def _seconds_to_next_decision(self, now: float) -> float:
        k = self._due_window(now) + 1
        return (k + 1) * self.settings.window_s + self.settings.settle_s - now

    # ------------------------------------------------------------------ the loop

    def start_metrics(self) -> tuple[str, int] | None:
        """Start the /metrics listener (OSError when the address is taken); its (host, port)."""
        if self.settings.metrics_listen is not None and self.metrics_server is None:
            self.metrics_server = self.metrics.serve(*self.settings.metrics_listen)
        return None if self.metrics_server is None else self.metrics_server.server_address[:2]

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set; then release leases, leave the group and save (if asked)."""
        s = self.settings
        self.start_metrics()
        log.info("optimizer %s: model %s, window %.3gs, Redis %s, learning %s", s.consumer,
                 self.base_model_version, s.window_s, self.where, "on" if s.learn else "off")
        try:
            while not stop.is_set():
                try:
                    self.step()
                except (redis.RedisError, PolicyStoreError) as exc:
                    self._on_redis_error(exc)
                    stop.wait(min(1.0, s.window_s))
        finally:
            self.close()

    def step(self) -> None:
        if not self._ready:
            created = ensure_group(self.r)
            self._ready = True
            self.intake.recover_pending = True
            if self._outage_since is not None:
                log.warning("Redis at %s is reachable again after %.1fs", self.where,
                            time.monotonic() - self._outage_since)
                self._outage_since = None
            if created:
                log.info("created consumer group on the telemetry stream")
        now = self.clock()
        block_s = max(0.001, min(1.0, self.settings.window_s, self._seconds_to_next_decision(now)))
        entries = self.intake.read(int(block_s * 1000))
        k_now = math.floor(self.clock() / self.settings.window_s)
        if self._last_claim != k_now:
            self._last_claim = k_now
            entries += self.intake.claim_abandoned()
        if entries:
            self._fold(entries, self.clock())
        self._maybe_decide(self.clock())

    def _on_redis_error(self, exc: Exception) -> None:
        self.metrics.redis_errors.inc()
        self._ready = False
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.error("cannot use Redis at %s: %s; retrying every %.1fs (proxies keep their last policy)",
                      self.where, exc, min(1.0, self.settings.window_s))
        else:
            log.debug("Redis still failing: %s", exc)

    # ------------------------------------------------------------------ folding

    def _fold(self, entries: list[Entry], now: float) -> None:
        batches: dict[tuple[str, int], list[tuple[str, dict]]] = {}
        nothing_to_fold: list[str] = []
        moved = 0
        for entry_id, fields in entries:
            if fields is None:
                nothing_to_fold.append(entry_id)
                self.metrics.records.labels("trimmed").inc()
                continue
            try:
                record = parse_record(fields.get("record"))
            except BadRecord as exc:
                nothing_to_fold.append(entry_id)
                self._bad_record(entry_id, exc)
                continue
            k, was_moved = self._window_of(record, now)
            batches.setdefault((record["service"], k), []).append((entry_id, record))
            moved += was_moved
            self._want_lease(record["service"], now)
        if moved:
            self.metrics.records.labels("late").inc(moved)
        self.intake.ack(nothing_to_fold)
        for (service, k), batch in batches.items():
            self._flush(service, k, batch, now)

    def _flush(self, service: str, k: int, batch: list[tuple[str, dict]], now: float) -> None:
        for _ in range(5):
            base = self.partials.get((service, k))
            candidate = copy.deepcopy(base) if base is not None else ServiceWindow(service, k)
            kept = []
            for entry_id, record in batch:
                try:
                    check_compatible(candidate, record)
                except BadRecord as exc:   # bucket bounds differ from what the window holds
                    self.intake.ack([entry_id])
                    self._bad_record(entry_id, exc)
                    continue
                candidate.fold(record)
                kept.append((entry_id, record))
            batch = kept
            if not batch:
                return
            done = self.sharing.flush(service, k, candidate.to_json(), [entry_id for entry_id, _ in batch])
            if done is True:
                self.partials[(service, k)] = candidate
                self.metrics.records.labels("folded").inc(len(batch))
                return
            if isinstance(done, list):
                # Claimed by another consumer while this one stalled: theirs to count now.
                lost = set(done)
                log.warning("%d telemetry entries were claimed by another optimizer; not counted here", len(lost))
                batch = [(entry_id, record) for entry_id, record in batch if entry_id not in lost]
                continue
            # The owner sealed window k meanwhile: these entries count in a later window.
            self.metrics.records.labels("late").inc(len(batch))
            k = max(k + 1, math.floor(now / self.settings.window_s))
        log.error("could not place %d telemetry entries of %s in any open window; they stay pending",
                  len(batch), service)

    def _bad_record(self, entry_id: str, exc: BadRecord) -> None:
        self.metrics.records.labels("bad").inc()
        now = time.monotonic()
        if now - self._bad_logged_at >= BAD_RECORD_LOG_EVERY_S:
            self._bad_logged_at = now
            log.warning("skipped telemetry entry %s: %s (further ones within %.0fs are only counted)",
                        entry_id, exc, BAD_RECORD_LOG_EVERY_S)

    def _want_lease(self, service: str, now: float) -> None:
        if service in self.owned:
            self.owned[service] = 0
            return
        k_now = math.floor(now / self.settings.window_s)
        if self._lease_tried.get(service) == k_now:
            return                      # at most one attempt per service per window
        self._lease_tried[service] = k_now
        if self.sharing.try_acquire(service):
            self.owned[service] = 0
            self.metrics.owned.set(len(self.owned))
            log.info("deciding service %s (lease acquired)", service)

    # ------------------------------------------------------------------ deciding

    def _maybe_decide(self, now: float) -> None:
        due = self._due_window(now)
        if self._last_decided is None:
            self._last_decided = due        # start with the next window, never historic ones
        if due <= self._last_decided:
            return
        # Normally one window; after a stall or outage the last few are merged (older data is stale anyway).
        windows = tuple(range(max(self._last_decided + 1, due - MAX_WINDOWS_MERGED + 1), due + 1))
        to_decide = []
        for service in list(self.owned):
            if not self.sharing.renew(service):
                self._let_go(service)
                log.warning("lost the lease of service %s; another optimizer decides it now", service)
                continue
            merged = self._seal_and_merge(service, windows)
            if merged is None or not merged.records:
                self.owned[service] += len(windows)
                if self.owned[service] >= IDLE_WINDOWS_BEFORE_RELEASE:
                    self.sharing.release(service)
                    self._let_go(service)
                    log.info("released service %s: no telemetry for %d windows", service,
                             IDLE_WINDOWS_BEFORE_RELEASE)
                continue
            self.owned[service] = 0
            self._routes_decided.setdefault(service, set()).update(merged.routes)
            to_decide.append(WindowToDecide(merged, self.settings.window_s * len(windows)))
            self.history.append(DecidedWindow(service, windows, merged.records, _route_totals(merged)))
        self.metrics.owned.set(len(self.owned))
        self._last_decided = due
        for key in [key for key in self.partials if key[1] <= due]:
            del self.partials[key]
        log.debug("window %d due: deciding %s", due,
                  ", ".join(f"{w.window.service} ({w.window.records} records)" for w in to_decide) or "nothing")
        if to_decide:
            self.decider.decide(to_decide, due)
            self.metrics.windows.inc(len(to_decide))
            updates = self.controller.train_updates
            self.metrics.train_updates.inc(updates - self._train_updates_seen)
            self._train_updates_seen = updates
            self._windows_since_save += 1
            if self._windows_since_save >= self.settings.save_every_windows:
                self.save()

    def _let_go(self, service: str) -> None:
        """Stop deciding `service`; if it comes back, its routes start without a previous
        observation (no learning transition spans the gap)."""
        self.owned.pop(service, None)
        for route in self._routes_decided.pop(service, ()):
            self.controller.forget((service, route))

    def _seal_and_merge(self, service: str, windows: tuple[int, ...]) -> ServiceWindow | None:
        merged = None
        for k in windows:
            parts = self.sharing.seal_and_read(service, k)
            for text in parts or ():
                try:
                    part = ServiceWindow.from_json(text)
                    merged = part if merged is None else merged.merge(part)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipped an unreadable partial window of %s (window %d): %s", service, k, exc)
        return merged

    # ------------------------------------------------------------------ saving and shutdown

    def save(self) -> Path | None:
        path = self.settings.save_path
        self._windows_since_save = 0
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        self.agent.save(tmp)
        os.replace(tmp, path)       # readers never see half a checkpoint
        log.info("saved the agent to %s (%s)", path, self.model_version())
        return path

    def close(self) -> None:
        """Release leases and leave the group (best effort), save, stop the metrics listener."""
        try:
            for service in list(self.owned):
                self.sharing.release(service)
            self.owned.clear()
            if self._ready:
                self.intake.leave()
        except (redis.RedisError, PolicyStoreError) as exc:
            log.debug("leaving the group failed: %s", exc)
        if self.settings.save_path is not None:
            try:
                self.save()
            except OSError as exc:
                log.error("could not save the agent to %s: %s", self.settings.save_path, exc)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.r.close()


def _route_totals(win: ServiceWindow) -> dict:
    return {route: dict(sums.counts) for route, sums in win.routes.items()}
