"""Deciding merged service windows: telemetry sums -> RouteInputs -> Controller -> Redis.

The Controller (optimizer/controller.py) is the one decision path (features,
agent, guardrails), shared with training and evaluation; this module only
prepares its inputs from the policy store and telemetry, and carries its
decisions out:

- current action: the route's effective mode per the policy hash (route entry,
  else `*`, raised to the Redis floor); with no entry, the mode the proxies
  reported (their --mode) - i.e. what proxies serve now;
- mask: the stronger of the Redis floor and the config floor;
- a changed decision is written with set_route_policy (source "optimizer"); a
  floor set in between makes that raise PolicyError: logged, counted, and the
  next window decides again from what the store then holds;
- a proposal the guardrails held back (no change, proposal != applied) is logged
  to clidash:decisions with from == to; repeats of the same hold are not logged
  again until something changes (the metrics count every one).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import redis

from clidash.policy import STRONG, ModeSpec, PolicyError, RoutePolicy, ServicePolicy
from clidash.policy_store import PolicyStoreError, log_decision, read_policy, set_route_policy
from clidash.proxy.stats import OTHER_ROUTE

from ..actions import ACTIONS, mask_for_floor
from ..controller import Controller, Decision, RouteInput
from ..state import RouteState, action_for_mode
from .aggregate import RouteSums, ServiceWindow
from .metrics import OptimizerMetrics, hist_mean_s, latency_saved_s
from .settings import OptimizerSettings

log = logging.getLogger("clidash.optimizer.live")
SOURCE = "optimizer"


@dataclass(frozen=True)
class WindowToDecide:
    window: ServiceWindow       # merged over every process's partial
    duration_s: float           # window_s x the number of windows merged (after an outage: several)


@dataclass
class _RouteContext:
    service: str
    route: str
    sums: RouteSums
    state: RouteState
    current_spec: ModeSpec
    policy_version: int


def q_values_json(q_values: Sequence[float]) -> list[float | None]:
    """Masked actions are -inf, which JSON cannot hold: null."""
    return [None if not math.isfinite(q) else round(q, 4) for q in q_values]


class Decider:
    def __init__(self, r: redis.Redis, controller: Controller, settings: OptimizerSettings,
                 metrics: OptimizerMetrics, model_version: Callable[[], str]):
        self.r = r
        self.controller = controller
        self.settings = settings
        self.metrics = metrics
        self.model_version = model_version
        self._primary_mean_s: dict[tuple[str, str], float] = {}   # last known, for the latency-saved estimate
        self._last_hold: dict[tuple[str, str], tuple] = {}

    def decide(self, windows: Sequence[WindowToDecide], window_index: int) -> list[Decision]:
        """One Controller call for every route of every window (the guardrails count
        one window per call). Redis read errors propagate; write errors are per route."""
        inputs, contexts = [], []
        for item in windows:
            win = item.window
            policy = read_policy(self.r, win.service)
            for route, sums in sorted(win.routes.items()):
                if route == OTHER_ROUTE or sums.reads == 0:
                    continue    # __other__ is no route a policy can name; no reads: nothing to decide
                ctx, inp = self._prepare(win, route, sums, policy, item.duration_s)
                contexts.append(ctx)
                inputs.append(inp)
        if not inputs:
            return []
        decisions = self.controller.decide(inputs)
        for ctx, decision in zip(contexts, decisions):
            self._observe(ctx, decision)
            if decision.changed:
                self._write_change(ctx, decision, window_index)
            elif decision.events and decision.proposed != decision.applied:
                self._log_hold(ctx, decision, window_index)
        return decisions

    def _prepare(self, win: ServiceWindow, route: str, sums: RouteSums, policy: ServicePolicy,
                 duration_s: float) -> tuple[_RouteContext, RouteInput]:
        service, s = win.service, self.settings
        reported = _parse_or_none(sums.mode)
        current_spec = policy.effective_mode_for(route, reported or STRONG)
        floor = s.combined_floor(service, route, policy.floor_for(route))
        state = RouteState.from_record(sums.as_record(), win.replica_list(), duration_s)
        inp = RouteInput(key=(service, route), state=state, objective_ms=s.objective_for(service, route),
                         stale_budget=s.stale_budget_for(service, route), mask=tuple(mask_for_floor(floor)),
                         current_action=action_for_mode(current_spec))
        return _RouteContext(service, route, sums, state, current_spec, policy.version), inp

    # -- carrying decisions out

    def _extra(self, ctx: _RouteContext, d: Decision, window_index: int) -> dict:
        st = ctx.state
        return {"q_values": q_values_json(d.q_values), "reward": round(d.reward, 4),
                "model_version": self.model_version(), "proposed": str(ACTIONS[d.proposed]),
                "window": window_index, "consumer": self.settings.consumer,
                "observed": {"reads_primary": st.reads_primary, "reads_replica": st.reads_replica,
                             "writes": st.writes, "max_lag_ms": round(st.max_lag_ms, 1),
                             "stale_found": st.stale_found, "stale_audited": st.stale_audited}}

    def _write_change(self, ctx: _RouteContext, d: Decision, window_index: int) -> None:
        spec = ACTIONS[d.applied]
        self._last_hold.pop((ctx.service, ctx.route), None)
        try:
            set_route_policy(self.r, ctx.service, ctx.route, RoutePolicy(spec, source=SOURCE, reason=d.reason),
                             extra=self._extra(ctx, d, window_index))
        except PolicyError as exc:
            # A floor was raised between our read and our write: decide again next window.
            self.metrics.write_failures.labels("floor").inc()
            log.warning("%s/%s: not changed to %s: %s; retrying next window", ctx.service, ctx.route, spec, exc)
            return
        except PolicyStoreError as exc:
            self.metrics.write_failures.labels("redis").inc()
            log.error("%s/%s: not changed to %s: %s", ctx.service, ctx.route, spec, exc)
            return
        log.info("%s/%s %s -> %s reward=%.3f lag=%.0fms stale=%d/%d: %s", ctx.service, ctx.route,
                 ctx.current_spec, spec, d.reward, ctx.state.max_lag_ms, ctx.state.stale_found,
                 ctx.state.stale_audited, d.reason)

    def _log_hold(self, ctx: _RouteContext, d: Decision, window_index: int) -> None:
        key = (ctx.service, ctx.route)
        signature = (d.proposed, d.applied, tuple(kind for kind, _, _ in d.events))
        if self._last_hold.get(key) == signature:
            return
        try:
            log_decision(self.r, ctx.service, ctx.route, str(ctx.current_spec), str(ctx.current_spec),
                         source=SOURCE, reason=d.reason, version=ctx.policy_version,
                         extra=self._extra(ctx, d, window_index))
        except PolicyStoreError as exc:
            log.error("%s/%s: could not log a held proposal: %s", ctx.service, ctx.route, exc)
            return
        self._last_hold[key] = signature
        log.info("%s/%s held at %s (proposed %s): %s", ctx.service, ctx.route, ctx.current_spec,
                 ACTIONS[d.proposed], d.reason)

    def _observe(self, ctx: _RouteContext, d: Decision) -> None:
        m = self.metrics
        service, route = m.labels_for(ctx.service, ctx.route)
        to_mode = str(ACTIONS[d.applied]) if d.changed else str(ACTIONS[d.current])
        m.decisions.labels(service, route, str(ACTIONS[d.current]), to_mode).inc()
        m.reward.labels(service, route).set(d.reward)
        for kind, _, _ in d.events:
            m.guardrail.labels(kind).inc()
        st = ctx.state
        if st.stale_audited:
            m.stale_rate.labels(service, route).set(st.stale_rate)
        bounds = ctx.sums.latency_buckets_s
        key = (ctx.service, ctx.route)
        primary = hist_mean_s(bounds, ctx.sums.hists.get("read_primary_hist", ()))
        if primary is not None:
            self._primary_mean_s[key] = primary
        replica = hist_mean_s(bounds, ctx.sums.hists.get("read_replica_hist", ()))
        m.latency_saved.labels(service, route).inc(
            latency_saved_s(st.reads_replica, self._primary_mean_s.get(key), replica))


def _parse_or_none(text: str | None) -> ModeSpec | None:
    if not text:
        return None
    try:
        return ModeSpec.parse(text)
    except PolicyError:
        return None
