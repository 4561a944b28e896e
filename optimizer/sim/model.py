"""Building blocks of the window-level simulator: servers, lag processes, routes, scenarios.

Everything here works on whole windows (default 1 s), not single requests, so an
episode of hundreds of windows runs in milliseconds.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from . import calibration as cal


def erlang_c(c: int, rho: float) -> float:
    """Probability that an arrival waits in an M/M/c queue at per-server utilisation rho < 1."""
    a = c * rho  # offered load in Erlangs
    term, total = 1.0, 1.0  # sum_{k<c} a^k/k!, built incrementally
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c / (1.0 - rho)  # a^c / c! / (1 - rho)
    return top / (total + top)


@dataclass
class ServerWindow:
    mean_ms: float
    p99_ms: float
    utilisation: float      # min(1, offered load / capacity)
    offered: float          # offered load / capacity, may exceed 1
    dropped: float          # requests that timed out in this window (errors)


@dataclass
class Server:
    """An M/M/c queue with window-to-window backlog, to model saturation.

    Per window with arrival rate lam (req/s) and mean service time s (ms):
      rho = (lam*s*W + backlog) / (c*W)          offered load incl. carried-over work
      rho < RHO_MAX:  wait W_q follows M/M/c: P(wait) = ErlangC(c, rho),
                      P(W_q > t) = ErlangC * exp(-(c/s)(1-rho) t)
                      mean = s + ErlangC * s / (c (1 - rho))
                      p99  = s*SERVICE_P99_RATIO + max(0, ln(100 ErlangC) * s / (c (1-rho)))
      rho >= RHO_MAX: the queue is evaluated at RHO_MAX and the excess work is
                      carried as backlog; every request also waits backlog/c ms
                      to drain it. Backlog beyond TIMEOUT_MS of delay is dropped
                      and the dropped requests are errors.
    (The p99 sums service and wait quantiles: a slight over-estimate, on purpose.)
    """

    service_ms: float
    workers: int = cal.WORKERS
    RHO_MAX = 0.95
    backlog_ms: float = 0.0  # work (server-ms) carried over from the previous window

    def reset(self) -> None:
        self.backlog_ms = 0.0

    def window(self, lam: float, window_s: float, service_ms: float | None = None) -> ServerWindow:
        s = self.service_ms if service_ms is None else service_ms
        c = self.workers
        cap_ms = c * window_s * 1000.0
        work = lam * window_s * s + self.backlog_ms
        offered = work / cap_ms
        rho = min(offered, self.RHO_MAX)
        dropped = 0.0
        if offered > self.RHO_MAX:
            backlog = work - cap_ms * self.RHO_MAX
            max_backlog = cal.TIMEOUT_MS * c
            if backlog > max_backlog:
                dropped = (backlog - max_backlog) / s
                backlog = max_backlog
            self.backlog_ms = backlog
        else:
            self.backlog_ms = 0.0
        drain = self.backlog_ms / c
        pw = erlang_c(c, rho) if rho > 0 else 0.0
        scale = s / (c * (1.0 - rho))
        mean = s + pw * scale + drain
        tail = math.log(100.0 * pw) * scale if pw > 0.01 else 0.0
        p99 = s * cal.SERVICE_P99_RATIO + tail + drain
        return ServerWindow(mean, p99, min(1.0, offered), offered, dropped)


@dataclass
class LagProcess:
    """Replication lag of one replica, in ms, one value per window (the window's max).

    lag = base(t) * lognormal noise * replay_factor + spike(t)
      base(t):   `base_ms`, or the last entry of `base_schedule` [(window, ms)] at or before t
      noise:     exp(N(0, sigma)), sigma from calibration
      replay:    1 / (1 - min(0.9, writes/s * REPLAY_MS_PER_WRITE / 1000)): heavy writes slow replay
      spikes:    each window starts an episode with prob `spike_prob`; the lag grows
                 linearly to `spike_peak_ms` (x uniform 0.5..1.5) over the episode's
                 length (uniform spike_len), then drops back (the replica catches up)
      loss:      between windows [start, end) of any `down` interval the replica is
                 unhealthy (reads must go elsewhere); random losses with `loss_prob`
                 per window lasting `loss_len` windows.
    """

    base_ms: float = cal.REAL_BASE_LAG_MS
    sigma: float = cal.LAG_SIGMA
    base_schedule: list[tuple[int, float]] = field(default_factory=list)
    spike_prob: float = 0.0
    spike_peak_ms: float = 2_000.0
    spike_len: tuple[int, int] = (5, 20)
    down: list[tuple[int, int]] = field(default_factory=list)
    loss_prob: float = 0.0
    loss_len: tuple[int, int] = (10, 40)
    # episode state
    _spike_left: int = 0
    _spike_len: int = 0
    _spike_peak: float = 0.0
    _down_left: int = 0

    def reset(self) -> None:
        self._spike_left = self._spike_len = self._down_left = 0
        self._spike_peak = 0.0

    def base_at(self, t: int) -> float:
        base = self.base_ms
        for start, ms in self.base_schedule:
            if t >= start:
                base = ms
        return base

    def step(self, t: int, writes_per_s: float, rng: random.Random) -> tuple[float, bool]:
        """(lag_ms, healthy) for window t."""
        healthy = True
        for start, end in self.down:
            if start <= t < end:
                healthy = False
        if self._down_left > 0:
            self._down_left -= 1
            healthy = False
        elif self.loss_prob and rng.random() < self.loss_prob:
            self._down_left = rng.randint(*self.loss_len) - 1
            healthy = False
        if not healthy:
            return math.inf, False
        replay = 1.0 / (1.0 - min(0.9, writes_per_s * cal.REPLAY_MS_PER_WRITE / 1000.0))
        lag = self.base_at(t) * math.exp(rng.gauss(0.0, self.sigma)) * replay
        if self._spike_left == 0 and self.spike_prob and rng.random() < self.spike_prob:
            self._spike_len = self._spike_left = rng.randint(*self.spike_len)
            self._spike_peak = self.spike_peak_ms * rng.uniform(0.5, 1.5)
        if self._spike_left > 0:
            done = self._spike_len - self._spike_left + 1
            lag += self._spike_peak * done / self._spike_len
            self._spike_left -= 1
        return lag, True


@dataclass
class Route:
    """One route's traffic and its objectives.

    read_rate / write_rate:  requests per second at multiplier 1.
    ryw_share:   fraction of reads that read the session's own recent write.
    ryw_age_ms:  mean time from that write to the read (exponential).
    data_age_ms: mean age of the newest change to what other reads touch
                 (exponential); hot, often-updated data has a small age.
    objective_ms: latency objective for the route's p99.
    stale_budget: tolerated fraction of stale reads.
    floor:       the operator's floor (weakest mode allowed), None = no floor.
    """

    name: str
    read_rate: float
    write_rate: float
    ryw_share: float = 0.0
    ryw_age_ms: float = 200.0
    data_age_ms: float = 5_000.0
    objective_ms: float = 50.0
    stale_budget: float = 0.01
    floor: str | None = None


@dataclass(frozen=True)
class Multiplier:
    """Scales a route's rates over windows [start, end).

    ramp=False: applies only inside the interval (flash crowd, regime).
    ramp=True:  grows linearly from 1 to the target inside the interval, then holds it (drift).
    route=None applies to every route.
    """

    start: int
    end: int
    read: float = 1.0
    write: float = 1.0
    route: str | None = None
    ramp: bool = False

    def factors(self, t: int) -> tuple[float, float]:
        if t < self.start or (t >= self.end and not self.ramp):
            return 1.0, 1.0
        if self.ramp:
            f = min(1.0, (t - self.start) / max(1, self.end - self.start))
            return 1.0 + (self.read - 1.0) * f, 1.0 + (self.write - 1.0) * f
        return self.read, self.write


@dataclass
class Scenario:
    name: str
    routes: list[Route]
    replicas: list[LagProcess]
    multipliers: list[Multiplier] = field(default_factory=list)
    windows: int = 600
    window_s: float = 1.0
    primary_workers: int = cal.WORKERS
    replica_workers: int = cal.WORKERS
    description: str = ""

    def rates(self, t: int, route: Route) -> tuple[float, float]:
        r, w = route.read_rate, route.write_rate
        for m in self.multipliers:
            if m.route is None or m.route == route.name:
                fr, fw = m.factors(t)
                r *= fr
                w *= fw
        return r, w
