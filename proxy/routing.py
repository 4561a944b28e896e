"""Where a request runs: a pure function of the request, the session, the policy
and the replicas' states. Protocol-neutral; tested with tables of cases.

Returns (target, reason): target is PRIMARY or a replica's index in `replicas`.
The reason is a short label used in metrics (`clidash_proxy_routed_total`) and,
for reads that wanted a replica but could not have one, a fallback reason
("lag", "ryw", "replica_down").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from clidash.policy import Mode, ModeSpec

PRIMARY = -1

# Reads that could not be served within their mode's guarantee; they go to the
# primary and are counted under these reasons.
FALLBACK_REASONS = ("lag", "ryw", "replica_down")

DEFAULT_HARD_LAG_CAP_MS = 30_000.0


@dataclass(slots=True)
class ReplicaView:
    """What routing needs to know about one replica (kept current by the monitor)."""

    name: str
    healthy: bool = True
    lag_ms: float | None = None       # None: not measured yet
    replay_position: int | None = None  # e.g. a PostgreSQL replay LSN as an integer
    lag_bytes: int | None = None      # WAL the replica has yet to replay; None: unknown
    inflight: int = 0                 # requests this proxy has running on it now


@dataclass(frozen=True, slots=True)
class SessionView:
    """The parts of a client session's state that constrain routing."""

    transaction_target: int | None = None  # backend holding an open transaction
    pinned_to_primary: bool = False         # temp tables, LISTEN, WITH HOLD cursors
    last_write_position: int | None = None  # read-your-writes token


def route(replica_ok: bool, reason: str, session: SessionView, policy: ModeSpec,
          replicas: Sequence[ReplicaView], hard_lag_cap_ms: float = DEFAULT_HARD_LAG_CAP_MS) -> tuple[int, str]:
    if session.transaction_target is not None:
        return session.transaction_target, "transaction"
    if session.pinned_to_primary:
        return PRIMARY, "pinned_session"
    if not replica_ok:
        return PRIMARY, reason
    mode = policy.mode
    if mode is Mode.STRONG or not replicas:
        return PRIMARY, "mode_strong" if mode is Mode.STRONG else "replica_down"

    best = None
    best_load = None
    any_healthy = False
    failed_on = "replica_down"
    for index, replica in enumerate(replicas):
        if not replica.healthy:
            continue
        any_healthy = True
        lag = replica.lag_ms
        if mode is Mode.EVENTUAL:
            if lag is not None and lag > hard_lag_cap_ms:
                failed_on = "lag"
                continue
        elif mode is Mode.BOUNDED:
            if lag is None or lag > policy.max_lag_ms:
                failed_on = "lag"
                continue
        else:  # READ_YOUR_WRITES
            token = session.last_write_position
            if token is not None and (replica.replay_position is None or replica.replay_position < token):
                failed_on = "ryw"
                continue
            if lag is not None and lag > hard_lag_cap_ms:
                failed_on = "lag"
                continue
        if best is None or replica.inflight < best_load:
            best, best_load = index, replica.inflight
    if best is None:
        return PRIMARY, failed_on if any_healthy else "replica_down"
    return best, "replica"
