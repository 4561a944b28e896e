"""SimEnv: step a Scenario one window at a time under per-route consistency modes.

Routing follows DESIGN section 4 at window granularity:
  STRONG            every read on the primary; never stale.
  READ_YOUR_WRITES  own-write reads go to the least-lagged healthy replica only if its
                    lag <= the read's write age (else primary, fallback "ryw"); other
                    reads go to replicas and may be stale w.r.t. other sessions' writes.
                    Own-write reads are never stale, so ryw_violations == 0 by construction.
  BOUNDED(x)        replicas with lag <= x (else primary, fallback "lag").
  EVENTUAL          any healthy replica under the hard cap.
No healthy replica -> reads go to the primary with fallback "replica_down", never an error.

Staleness: a read served by a replica with lag L is stale when the data it needs
changed less than L ago. Ages are exponential, so P(stale) = 1 - exp(-L / mean_age),
with mean_age = route.ryw_age_ms for own-write reads and route.data_age_ms otherwise.
Counts are sampled (Poisson arrivals, binomial splits) from three separate seeded
streams (traffic, lag, outcomes), so the lag and traffic sequence for a seed is the
same whatever actions are taken: runs of different policies are directly comparable.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Mapping

from clidash.policy import Mode, ModeSpec

from . import calibration as cal
from .model import Route, Scenario, Server

STRONG = ModeSpec(Mode.STRONG)
_LN100 = math.log(100.0)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    mean = n * p
    var = mean * (1.0 - p)
    if var > 9.0:
        return min(n, max(0, round(rng.gauss(mean, math.sqrt(var)))))
    if n <= 40:
        return sum(1 for _ in range(n) if rng.random() < p)
    if p < 0.5:
        return min(n, _poisson(rng, mean))
    return n - min(n, _poisson(rng, n - mean))


@dataclass
class WindowResult:
    route: str
    mode: str
    reads_primary: int = 0
    reads_replica: int = 0
    writes: int = 0
    stale_reads: int = 0
    ryw_violations: int = 0       # own-write reads served stale
    ryw_exposed_reads: int = 0    # own-write reads served by a replica
    fallbacks: int = 0
    fallbacks_by_reason: dict = field(default_factory=lambda: {"lag": 0, "ryw": 0, "replica_down": 0})
    errors: int = 0               # timeouts from a saturated server only
    primary_p99_ms: float = 0.0
    replica_p99_ms: float = 0.0
    route_p99_ms: float = 0.0
    primary_utilisation: float = 0.0
    primary_offered_load: float = 0.0
    replica_lag_ms: float = 0.0   # max lag among healthy replicas
    healthy_replicas: int = 0

    @property
    def reads(self) -> int:
        return self.reads_primary + self.reads_replica

    @property
    def stale_fraction(self) -> float:
        return self.stale_reads / self.reads if self.reads else 0.0

    @property
    def replica_share(self) -> float:
        return self.reads_replica / self.reads if self.reads else 0.0


def _tail_p99(parts: list[tuple[float, float]]) -> float:
    """p99 of a mixture of latency distributions [(weight, p99)], each with an
    exponential-like tail: component i alone reaches the mixture's 1% tail at
    p99_i * ln(100 w_i) / ln(100). Take the max (a mild over-estimate)."""
    best = 0.0
    for w, p99 in parts:
        if w > 0.01:
            best = max(best, p99 * math.log(100.0 * w) / _LN100)
    return best


class SimEnv:
    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.seed = seed
        self.primary = Server(cal.PRIMARY_READ_MS, scenario.primary_workers)
        self.replica_servers = [Server(cal.REPLICA_READ_MS, scenario.replica_workers) for _ in scenario.replicas]
        self.reset()

    # ------------------------------------------------------------------ API

    def reset(self) -> dict[str, dict]:
        base = random.Random(self.seed)
        # independent streams so that actions never shift the traffic/lag sequence
        self._traffic = random.Random(base.getrandbits(64))
        self._lag_rng = random.Random(base.getrandbits(64))
        self._outcome = random.Random(base.getrandbits(64))
        self.t = 0
        self.primary.reset()
        for s in self.replica_servers:
            s.reset()
        for lp in self.scenario.replicas:
            lp.reset()
        sc = self.scenario
        self._obs = {}
        for r in sc.routes:
            rr, wr = sc.rates(0, r)
            self._obs[r.name] = self._route_obs(r, rr, wr, sc.replicas[0].base_at(0) if sc.replicas else 0.0,
                                                len(sc.replicas), 0.0, None)
        return self.observe()

    def observe(self) -> dict[str, dict]:
        """Per-route state as seen after the last window (what a proxy's telemetry shows)."""
        return {k: dict(v) for k, v in self._obs.items()}

    @property
    def done(self) -> bool:
        return self.t >= self.scenario.windows

    def step(self, actions: Mapping[str, ModeSpec | str],
             expected_outcomes: bool = False) -> tuple[dict[str, WindowResult], bool]:
        """Run one window. `expected_outcomes`: stale counts are their expectation
        (floats) instead of a draw, for a look-ahead that knows the window's traffic
        and lag but not its coin flips."""
        sc, t, W = self.scenario, self.t, self.scenario.window_s
        tr, out = self._traffic, self._outcome

        def draw_stale(n: int, p: float) -> float:
            return n * p if expected_outcomes else _binomial(out, n, p)

        # 1. traffic for this window
        arrivals = []
        total_write_rate = 0.0
        for r in sc.routes:
            rr, wr = sc.rates(t, r)
            total_write_rate += wr
            reads = _poisson(tr, rr * W)
            own = _binomial(tr, reads, r.ryw_share)
            arrivals.append((r, reads - own, own, _poisson(tr, wr * W)))

        # 2. replica state (depends on the write load only, never on the actions)
        reps = [lp.step(t, total_write_rate, self._lag_rng) for lp in sc.replicas]
        healthy = [(i, lag) for i, (lag, ok) in enumerate(reps) if ok]
        under_cap = [(i, lag) for i, lag in healthy if lag < cal.EVENTUAL_HARD_CAP_MS]
        max_lag = max((lag for _, lag in healthy), default=0.0)

        # 3. route each route's reads
        results: dict[str, WindowResult] = {}
        rep_reads = [0] * len(reps)
        per_route_rep: dict[str, list[int]] = {}
        for r, other, own, writes in arrivals:
            spec = actions.get(r.name, STRONG)
            if isinstance(spec, str):
                spec = ModeSpec.parse(spec)
            res = WindowResult(r.name, str(spec), writes=writes, healthy_replicas=len(healthy),
                               replica_lag_ms=max_lag)
            fb = res.fallbacks_by_reason
            mode = spec.mode
            counts = [0] * len(reps)
            if mode is Mode.STRONG:
                res.reads_primary = other + own
            else:
                if mode is Mode.BOUNDED:
                    eligible = [(i, lag) for i, lag in under_cap if lag <= (spec.max_lag_ms or 0.0)]
                else:
                    eligible = under_cap
                reason = "replica_down" if not healthy else "lag"
                if not eligible:
                    res.reads_primary = other + own
                    fb[reason] += other + own
                else:
                    n = len(eligible)
                    stale_other = sum(1.0 - math.exp(-lag / r.data_age_ms) for _, lag in eligible) / n
                    if mode is Mode.READ_YOUR_WRITES:
                        # only own-write reads whose write the best replica has replayed
                        best = min(lag for _, lag in eligible)
                        own_rep = _binomial(out, own, math.exp(-best / r.ryw_age_ms))
                        fb["ryw"] += own - own_rep
                        res.reads_primary = own - own_rep
                        res.ryw_exposed_reads = own_rep
                        own_stale = 0
                    else:
                        own_rep = own
                        res.ryw_exposed_reads = own
                        p_own = sum(1.0 - math.exp(-lag / r.ryw_age_ms) for _, lag in eligible) / n
                        own_stale = draw_stale(own, p_own)
                        res.ryw_violations = own_stale
                    res.stale_reads = own_stale + draw_stale(other, stale_other)
                    on_rep = other + own_rep
                    res.reads_replica = on_rep
                    q, extra = divmod(on_rep, n)
                    for k, (i, _) in enumerate(eligible):
                        counts[i] = q + (1 if k < extra else 0)
                        rep_reads[i] += counts[i]
            res.fallbacks = sum(fb.values())
            per_route_rep[r.name] = counts
            results[r.name] = res

        # 4. servers
        p_reads = sum(x.reads_primary for x in results.values())
        p_writes = sum(x.writes for x in results.values())
        p_total = p_reads + p_writes
        s_mix = ((p_reads * cal.PRIMARY_READ_MS + p_writes * cal.WRITE_MS) / p_total) if p_total else cal.PRIMARY_READ_MS
        pw = self.primary.window(p_total / W, W, s_mix)
        write_p99 = pw.p99_ms - (s_mix - cal.WRITE_MS) * cal.SERVICE_P99_RATIO
        rws = [srv.window(rep_reads[i] / W, W) for i, srv in enumerate(self.replica_servers)]
        rep_p99 = max((rws[i].p99_ms for i, _ in healthy), default=0.0)

        # 5. latency, errors (timeouts of a saturated server, shared by its traffic)
        for r, *_ in arrivals:
            res = results[r.name]
            res.primary_p99_ms = pw.p99_ms
            res.replica_p99_ms = rep_p99
            res.primary_utilisation = pw.utilisation
            res.primary_offered_load = pw.offered
            total = res.reads + res.writes
            if not total:
                continue
            parts = [(res.reads_primary / total, pw.p99_ms), (res.writes / total, write_p99)]
            err = pw.dropped * (res.reads_primary + res.writes) / p_total if p_total else 0.0
            for i, c in enumerate(per_route_rep[r.name]):
                if c:
                    parts.append((c / total, rws[i].p99_ms))
                    if rep_reads[i]:
                        err += rws[i].dropped * c / rep_reads[i]
            res.route_p99_ms = _tail_p99(parts)
            res.errors = min(total, round(err))

        # 6. advance
        for r, other, own, writes in arrivals:
            res = results[r.name]
            self._obs[r.name] = self._route_obs(r, (other + own) / W, writes / W, max_lag, len(healthy),
                                                pw.utilisation, res)
        self.t += 1
        return results, self.done

    def snapshot(self) -> tuple:
        """Everything step() changes, for a hindsight search that tries several actions
        from the same point (restore() puts it back)."""
        return (self.t, self._traffic.getstate(), self._lag_rng.getstate(), self._outcome.getstate(),
                self.primary.backlog_ms, [s.backlog_ms for s in self.replica_servers],
                [(lp._spike_left, lp._spike_len, lp._spike_peak, lp._down_left) for lp in self.scenario.replicas],
                {k: dict(v) for k, v in self._obs.items()})

    def restore(self, snap: tuple) -> None:
        t, traffic, lag, outcome, backlog, rep_backlogs, lags, obs = snap
        self.t = t
        self._traffic.setstate(traffic)
        self._lag_rng.setstate(lag)
        self._outcome.setstate(outcome)
        self.primary.backlog_ms = backlog
        for srv, b in zip(self.replica_servers, rep_backlogs):
            srv.backlog_ms = b
        for lp, (left, length, peak, down) in zip(self.scenario.replicas, lags):
            lp._spike_left, lp._spike_len, lp._spike_peak, lp._down_left = left, length, peak, down
        self._obs = {k: dict(v) for k, v in obs.items()}

    # ------------------------------------------------------------------ helpers

    def _route_obs(self, r: Route, read_rate: float, write_rate: float, lag: float, healthy: int,
                   util: float, last: WindowResult | None) -> dict:
        return {
            "window": self.t,
            "read_rate": read_rate,
            "write_rate": write_rate,
            "ryw_share": r.ryw_share,
            "objective_ms": r.objective_ms,
            "stale_budget": r.stale_budget,
            "replica_lag_ms": lag,
            "healthy_replicas": healthy,
            "replicas": len(self.scenario.replicas),
            "primary_utilisation": util,
            "route_p99_ms": last.route_p99_ms if last else 0.0,
            "stale_fraction": last.stale_fraction if last else 0.0,
            "fallbacks": last.fallbacks if last else 0,
            "mode": last.mode if last else None,
        }
