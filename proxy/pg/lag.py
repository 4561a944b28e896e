"""Replica lag in milliseconds and bytes, and read-your-writes tokens, for PostgreSQL.

Lag without idle-primary inflation
    `now() - pg_last_xact_replay_timestamp()` on a replica grows while the
    primary is idle: no new commit to replay means an old timestamp, not a stale
    replica. Instead the primary's WAL position is sampled every few ms into a
    history of (time first seen, time last seen, LSN) runs, and a replica's lag is
    `now - the time the primary first went past the replica's replay LSN`. An
    idle primary makes no new WAL, so a caught-up replica reads 0 ms however long
    the idle spell. Precision: the reading trails the truth by up to one primary
    interval plus one replica poll (3-14 ms low at 5 ms / 10 ms on the test box).

Read-your-writes tokens without a round trip on the write path
    `token_after(commit_time)` is the LSN of the first sample *sent* strictly
    after `commit_time` (time.monotonic(), read once the proxy has received the
    reply that ends the write transaction). That LSN is at or after the end of
    the commit record: the server inserts the commit record into WAL before it
    sends that reply, the sample query was sent after the reply was received, so
    the server evaluates it after the insertion. Strictly after, because two
    equal clock readings do not order the two events.
    The reply to wait for is ReadyForQuery with status 'I'. CommandComplete is
    not always enough: with the extended protocol an autocommit statement's
    CommandComplete is sent at Execute, but the transaction commits at Sync
    (postgres.c, exec_execute_message / finish_xact_command). An explicit COMMIT
    and the last statement of a simple Query do commit before CommandComplete.

Which position: pg_current_wal_insert_lsn(), not pg_current_wal_lsn()
    pg_current_wal_lsn() is the *write* position: WAL handed to the kernel. With
    synchronous_commit = off (settable by any client, per transaction) a commit
    record is inserted and the commit becomes visible and is acknowledged before
    it is written; the WAL writer writes it up to 3 x wal_writer_delay later. A
    token taken from the write position can then lie before the commit record,
    and a replica that replayed "up to the token" may not show the client's
    write. The insert position covers every inserted record, under any
    synchronous_commit (tests/integration/test_pg_lag.py shows the write
    position behind a just-committed row on the test cluster, which runs with
    synchronous_commit = off). The history uses the same position, which errs on
    the safe side for BOUNDED reads (lag is never under-reported because WAL is
    still in the primary's buffers). Two costs of that choice:
      * the insert position can sit just past a page header, where no record
        ends; `lsn.insert_position_as_end` maps it back to the boundary;
      * WAL inserted but not yet written and not part of any commit (a session
        that wrote and then sits idle in transaction on an otherwise idle
        primary) counts as lag until something writes it: the next commit, or
        the standby snapshot the bgwriter logs every 15 s or so (about 20 s seen
        on PostgreSQL 15). That over-reports, so bounded reads fall back to the
        primary meanwhile; it never under-reports.

Failures never reach the caller: each connection reconnects with backoff and
logs one warning per outage. While the primary is not being sampled, lag is
unknown (None) and no new tokens appear (RYW reads go to the primary); an
unreachable replica reads lag None and replay_position None. Health (the
`healthy` flag) stays with replicas.ReplicaMonitor.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import time
from dataclasses import dataclass
from typing import Sequence

from clidash.proxy.dsn import BackendAddress
from clidash.proxy.lsn import DEFAULT_BLOCK_SIZE, DEFAULT_SEGMENT_SIZE, insert_position_as_end
from clidash.proxy.routing import ReplicaView

log = logging.getLogger("clidash.proxy.pg.lag")

PRIMARY_SQL = "SELECT pg_current_wal_insert_lsn()"
REPLICA_SQL = "SELECT pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(), pg_is_wal_replay_paused()"
WAL_GEOMETRY_SQL = "SELECT current_setting('wal_block_size')::int, pg_size_bytes(current_setting('wal_segment_size'))"
APPLICATION_NAME = "clidash-lag-monitor"

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


# -- pure math -------------------------------------------------------------------


class WalHistory:
    """The primary's WAL position over the last `max_age_s` seconds, as runs.

    Run i: the position was `lsns[i]` from the sample at `first_seen[i]` through
    the sample at `last_seen[i]`. A new run starts only when the position moves,
    so an idle primary costs one run however long it idles, and the last run's
    `last_seen` says "the primary was still at X at time t". Positions only grow
    within a history; times are one monotonic clock. Lists with a moving start
    (not a deque) so that lookups are bisections.
    """

    def __init__(self, max_age_s: float = 60.0):
        self.max_age_s = max_age_s
        self._first_seen: list[float] = []
        self._last_seen: list[float] = []
        self._lsns: list[int] = []
        self._start = 0  # runs before this index have aged out

    def __len__(self) -> int:
        return len(self._lsns) - self._start

    @property
    def latest(self) -> tuple[float, int] | None:
        """(time of the newest sample, its LSN), or None before the first sample."""
        if not len(self):
            return None
        return self._last_seen[-1], self._lsns[-1]

    def record(self, t: float, lsn: int) -> bool:
        """Add a sample. Returns False when the position went backwards (a different
        primary, or a restore): the history no longer describes this server and is
        cleared before the sample is kept."""
        monotone = True
        if len(self):
            if lsn == self._lsns[-1]:
                self._last_seen[-1] = t
                return True
            if lsn < self._lsns[-1]:
                self.clear()
                monotone = False
        self._first_seen.append(t)
        self._last_seen.append(t)
        self._lsns.append(lsn)
        self._trim(t)
        return monotone

    def clear(self) -> None:
        self._first_seen.clear()
        self._last_seen.clear()
        self._lsns.clear()
        self._start = 0

    def _trim(self, now: float) -> None:
        # Runs last seen before the horizon go, except the newest (still current).
        horizon = now - self.max_age_s
        end = len(self._lsns) - 1
        start = bisect.bisect_left(self._last_seen, horizon, self._start, end)
        self._start = start
        if start > 1024 and start * 2 > len(self._lsns):  # compact now and then
            del self._first_seen[:start], self._last_seen[:start], self._lsns[:start]
            self._start = 0

    def token_after(self, t: float) -> int | None:
        """The LSN seen by the first sample taken strictly after `t`, or None if no
        sample is that new yet. If `t` is older than every kept run, the oldest
        kept run answers: it was still sampled after `t`, so it is a valid (if
        later than needed) token."""
        i = bisect.bisect_right(self._last_seen, t, self._start)
        if i == len(self._lsns):
            return None
        return self._lsns[i]

    def lag_s(self, replay_lsn: int, now: float) -> tuple[float, bool]:
        """(seconds the replica is behind, exact?) for a replica at `replay_lsn`.

        0 when the replica has replayed up to the newest sampled position. Else the
        age of the first run past `replay_lsn`: when the primary first had WAL the
        replica still lacks. If even the oldest kept run is past it, the true
        moment is older than the history, so the age of that run is a lower bound
        and `exact` is False. Requires a non-empty history.
        """
        if replay_lsn >= self._lsns[-1]:
            return 0.0, True
        i = bisect.bisect_right(self._lsns, replay_lsn, self._start)
        return max(0.0, now - self._first_seen[i]), i > self._start


@dataclass(slots=True)
class ReplicaLag:
    """What the poller last learned about one replica (None: unknown)."""

    lag_ms: float | None = None
    lag_bytes: int | None = None
    replay_lsn: int | None = None
    receive_lsn: int | None = None
    paused: bool | None = None
    exact: bool = True  # False: lag_ms is a lower bound (history too short)


def replica_lag(history: WalHistory, replay_lsn: int | None, now: float,
                stale_after_s: float) -> tuple[float | None, int | None, bool]:
    """(lag_ms, lag_bytes, exact) for a replica at `replay_lsn`.

    Unknown (None) when the replica is not replaying (promoted, or not a standby)
    or when the newest primary sample is older than `stale_after_s`: the primary
    may have moved since, so "caught up" could not be told from "behind".
    """
    latest = history.latest
    if replay_lsn is None or latest is None or now - latest[0] > stale_after_s:
        return None, None, True
    seconds, exact = history.lag_s(replay_lsn, now)
    return seconds * 1000.0, max(0, latest[1] - replay_lsn), exact


# -- IO shell ----------------------------------------------------------------------


class _Link:
    """One monitoring connection: connect on demand, back off after failures,
    one warning per outage."""

    def __init__(self, address: BackendAddress, timeout_s: float):
        self.address = address
        self.timeout_s = timeout_s
        self.conn = None
        self.statement = None
        self.backoff_s = BACKOFF_MIN_S
        self.down_since: float | None = None

    async def open(self, sql: str):
        import asyncpg
        addr = self.address
        self.conn = await asyncpg.connect(
            host=addr.host, port=addr.port, user=addr.user, password=addr.password,
            database=addr.dbname or addr.user, timeout=self.timeout_s, statement_cache_size=0,
            server_settings={"application_name": APPLICATION_NAME})
        # A named prepared statement: one round trip per sample (an unnamed one
        # would Parse/Describe again every time).
        self.statement = await self.conn.prepare(sql, timeout=self.timeout_s)
        return self.conn

    def failed(self, exc: BaseException) -> float:
        """Drop the connection; returns how long to wait before the next try."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("lag monitor lost %s: %s: %s (retrying with backoff)",
                        self.address.describe(), type(exc).__name__, exc)
        self.close()
        delay, self.backoff_s = self.backoff_s, min(self.backoff_s * 2, BACKOFF_MAX_S)
        return delay

    def succeeded(self) -> None:
        if self.down_since is not None:
            log.warning("lag monitor reached %s again after %.1f s", self.address.describe(),
                        time.monotonic() - self.down_since)
            self.down_since = None
        self.backoff_s = BACKOFF_MIN_S

    def close(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
        self.conn = self.statement = None


class PgLagMonitor:
    """Samples the primary's WAL insert position and each replica's replay
    position, and keeps `views[i].lag_ms`, `.lag_bytes` and `.replay_position`
    current for routing."""

    def __init__(self, primary: BackendAddress, replicas: Sequence[BackendAddress],
                 views: Sequence[ReplicaView], primary_interval_s: float = 0.005,
                 replica_interval_s: float = 0.01, history_s: float = 60.0,
                 timeout_s: float = 2.0, stale_after_s: float | None = None):
        if len(replicas) != len(views):
            raise ValueError("one ReplicaView per replica address")
        self.primary = primary
        self.replicas = list(replicas)
        self.views = views
        self.primary_interval_s = primary_interval_s
        self.replica_interval_s = replica_interval_s
        self.timeout_s = timeout_s
        # Lag is unknown once the primary has not been sampled for this long.
        self.stale_after_s = stale_after_s if stale_after_s is not None else max(1.0, 50 * primary_interval_s)
        self.history = WalHistory(history_s)
        self.state = [ReplicaLag() for _ in self.replicas]
        self._block_size = DEFAULT_BLOCK_SIZE
        self._segment_size = DEFAULT_SEGMENT_SIZE
        self._sampled: asyncio.Future | None = None  # resolved by the next primary sample
        self._links: list[_Link] = []
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start sampling; returns at once (connections are made in the background)."""
        loop = asyncio.get_running_loop()
        self._sampled = loop.create_future()
        primary = _Link(self.primary, self.timeout_s)
        self._links = [primary]
        self._tasks = [loop.create_task(self._run_primary(primary), name="lag-primary")]
        for index, address in enumerate(self.replicas):
            link = _Link(address, self.timeout_s)
            self._links.append(link)
            self._tasks.append(loop.create_task(self._run_replica(index, link), name=f"lag-{address.name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for link in self._links:
            link.close()
        self._wake_token_waiters()  # they see no tasks and return None

    # -- tokens -----------------------------------------------------------------------

    def token_after(self, commit_time: float) -> int | None:
        """An LSN at or after the end of any commit acknowledged before `commit_time`
        (time.monotonic()), or None if no primary sample is that new yet."""
        return self.history.token_after(commit_time)

    async def wait_token(self, commit_time: float, timeout_s: float) -> int | None:
        """token_after, waiting at most `timeout_s` for a new enough sample."""
        token = self.history.token_after(commit_time)
        try:
            async with asyncio.timeout(timeout_s):
                while token is None and self._tasks:
                    # shield: a waiter that times out must not cancel the future
                    # the other waiters share.
                    await asyncio.shield(self._sampled)
                    token = self.history.token_after(commit_time)
        except TimeoutError:
            pass
        return token

    @property
    def primary_lsn(self) -> int | None:
        latest = self.history.latest
        return latest[1] if latest else None

    def snapshot(self) -> list[dict]:
        """Per replica: name, lag_ms, lag_bytes, replay_lsn, receive_lsn, paused,
        lag_exact (False: lag_ms is a lower bound). For metrics."""
        return [{"name": address.name, "lag_ms": s.lag_ms, "lag_bytes": s.lag_bytes,
                 "replay_lsn": s.replay_lsn, "receive_lsn": s.receive_lsn, "paused": s.paused,
                 "lag_exact": s.exact}
                for address, s in zip(self.replicas, self.state)]

    # -- samplers -----------------------------------------------------------------------

    async def _run_primary(self, link: _Link) -> None:
        interval = self.primary_interval_s
        next_at = time.monotonic()
        while True:
            try:
                if link.conn is None:
                    conn = await link.open(PRIMARY_SQL)
                    self._block_size, self._segment_size = await conn.fetchrow(
                        WAL_GEOMETRY_SQL, timeout=self.timeout_s)
                # The send time is the sample's time: the server reads the
                # position after this instant (see token_after).
                t = time.monotonic()
                raw = await link.statement.fetchval(timeout=self.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect later
                await asyncio.sleep(link.failed(exc))
                next_at = time.monotonic()
                continue
            link.succeeded()
            lsn = insert_position_as_end(raw, self._block_size, self._segment_size)
            if not self.history.record(t, lsn):
                log.warning("primary WAL position went backwards (failover or restore?): lag history reset")
            self._wake_token_waiters()
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    def _wake_token_waiters(self) -> None:
        sampled = self._sampled
        if sampled is not None and not sampled.done():
            self._sampled = sampled.get_loop().create_future()
            sampled.set_result(None)

    async def _run_replica(self, index: int, link: _Link) -> None:
        interval = self.replica_interval_s
        next_at = time.monotonic()
        while True:
            try:
                if link.conn is None:
                    await link.open(REPLICA_SQL)
                replay, receive, paused = await link.statement.fetchrow(timeout=self.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: unknown lag, reconnect later
                self._set_unknown(index)
                await asyncio.sleep(link.failed(exc))
                next_at = time.monotonic()
                continue
            link.succeeded()
            self._update(index, replay, receive, paused, time.monotonic())
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    def _update(self, index: int, replay: int | None, receive: int | None, paused: bool | None,
                now: float) -> None:
        lag_ms, lag_bytes, exact = replica_lag(self.history, replay, now, self.stale_after_s)
        state = self.state[index]
        state.lag_ms, state.lag_bytes, state.exact = lag_ms, lag_bytes, exact
        state.replay_lsn, state.receive_lsn, state.paused = replay, receive, paused
        view = self.views[index]
        view.lag_ms, view.lag_bytes, view.replay_position = lag_ms, lag_bytes, replay

    def _set_unknown(self, index: int) -> None:
        self.state[index] = ReplicaLag()
        view = self.views[index]
        view.lag_ms = view.lag_bytes = view.replay_position = None
