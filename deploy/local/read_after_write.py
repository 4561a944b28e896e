"""Read-after-write checker: many sessions through a proxy, each writing a new
version of its own row and reading it straight back, while the standby's replay
is paused and resumed. Used by tests/integration and bench/read_after_write.py.

Every read reports which server answered (pg_is_in_recovery()) and the version
it saw; a read older than the session's own last write is stale, and its
staleness is the time since the first write it missed committed.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

TABLE = "clidash_raw_check"


@dataclass
class CheckResult:
    reads: int = 0
    replica_reads: int = 0
    stale_reads: int = 0
    stale_replica_reads: int = 0
    max_staleness_ms: float = 0.0
    staleness_ms: list = field(default_factory=list)

    @property
    def replica_share(self) -> float:
        return self.replica_reads / self.reads if self.reads else 0.0


async def prepare(primary_dsn: str, replica_dsn: str, sessions: int) -> None:
    conn = await asyncpg.connect(primary_dsn)
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (session int PRIMARY KEY, version int NOT NULL)")
        await conn.execute(f"TRUNCATE {TABLE}")
        await conn.executemany(f"INSERT INTO {TABLE} VALUES ($1, 0)", [(s,) for s in range(sessions)])
    finally:
        await conn.close()
    replica = await asyncpg.connect(replica_dsn)
    try:
        deadline = time.monotonic() + 10
        while await replica.fetchval(f"SELECT count(*) FROM {TABLE}") != sessions:
            if time.monotonic() > deadline:
                raise TimeoutError("the standby did not replay the checker's table")
            await asyncio.sleep(0.05)
    finally:
        await replica.close()


async def run_check(proxy_dsn: str, primary_dsn: str, replica_dsn: str, sessions: int = 8,
                    duration_s: float = 3.0, pause_s: tuple[float, float] = (0.8, 2.0),
                    reads_per_write: int = 4, think_s: float = 0.002) -> CheckResult:
    """Drive the workload: each session writes, then reads its row back
    reads_per_write times, think_s apart. Replay is paused at pause_s[0] and
    resumed at pause_s[1] (seconds in)."""
    await prepare(primary_dsn, replica_dsn, sessions)
    result = CheckResult()
    start = time.monotonic()

    async def session(number: int) -> None:
        conn = await asyncpg.connect(proxy_dsn)
        committed_at = {0: start}
        version = 0
        try:
            while time.monotonic() - start < duration_s:
                version += 1
                await conn.execute(f"UPDATE {TABLE} SET version = $1 WHERE session = $2", version, number)
                committed_at[version] = time.monotonic()
                for _ in range(reads_per_write):
                    seen, on_replica = await conn.fetchrow(
                        f"SELECT version, pg_is_in_recovery() FROM {TABLE} WHERE session = $1", number)
                    now = time.monotonic()
                    result.reads += 1
                    result.replica_reads += on_replica
                    if seen < version:
                        staleness = (now - committed_at[seen + 1]) * 1000
                        result.stale_reads += 1
                        result.stale_replica_reads += on_replica
                        result.staleness_ms.append(staleness)
                        result.max_staleness_ms = max(result.max_staleness_ms, staleness)
                    await asyncio.sleep(think_s)
        finally:
            await conn.close()

    async def control_replay() -> None:
        replica = await asyncpg.connect(replica_dsn)
        try:
            await asyncio.sleep(pause_s[0])
            await replica.execute("SELECT pg_wal_replay_pause()")
            await asyncio.sleep(pause_s[1] - pause_s[0])
        finally:
            await replica.execute("SELECT pg_wal_replay_resume()")
            await replica.close()

    await asyncio.gather(control_replay(), *(session(n) for n in range(sessions)))
    return result
