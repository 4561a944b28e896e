"""Each consistency mode against the real primary + standby, with the standby's
replay paused in the middle of a read-after-write workload."""
import pytest

from clidash.config import build_proxy_config
from clidash.proxy.pg.server import PgProxy
from pgcluster import free_port
from read_after_write import run_check

# The lag reading trails the truth by up to one primary sample plus one replica
# poll (5 + 10 ms), and routing may act on a reading one poll old.
LAG_READING_SLACK_MS = 40


async def check(pg_cluster, mode: str, **options):
    port = free_port()
    config = build_proxy_config("postgresql", f"127.0.0.1:{port}", pg_cluster.primary.dsn,
                                [r.dsn for r in pg_cluster.replicas], "raw-check", mode, **options)
    proxy = PgProxy(config)
    await proxy.start()
    p = pg_cluster.primary
    try:
        return await run_check(f"postgresql://{p.user}:{p.password}@127.0.0.1:{port}/{p.dbname}",
                               p.dsn, pg_cluster.replicas[0].dsn, sessions=6, duration_s=2.5,
                               pause_s=(0.6, 1.8))
    finally:
        await proxy.close()


async def test_strong_never_reads_stale_and_never_uses_the_replica(pg_cluster):
    result = await check(pg_cluster, "STRONG")
    assert result.reads > 100
    assert (result.stale_reads, result.replica_reads) == (0, 0)


async def test_read_your_writes_never_reads_its_own_writes_stale(pg_cluster):
    result = await check(pg_cluster, "READ_YOUR_WRITES")
    print(f"RYW: {result.reads} reads, replica share {result.replica_share:.2f}")
    assert result.reads > 100
    assert result.stale_reads == 0
    assert result.replica_reads > 0      # outside the pause, reads after a caught-up write use the replica


async def test_read_your_writes_waiting_briefly_moves_reads_to_the_replica(pg_cluster):
    plain = await check(pg_cluster, "READ_YOUR_WRITES")
    waiting = await check(pg_cluster, "READ_YOUR_WRITES", ryw_wait_ms=20)
    print(f"RYW replica share: {plain.replica_share:.2f} without waiting, "
          f"{waiting.replica_share:.2f} waiting up to 20 ms")
    assert waiting.stale_reads == 0
    assert waiting.replica_share > plain.replica_share


async def test_bounded_reads_no_replica_beyond_its_bound(pg_cluster):
    result = await check(pg_cluster, "BOUNDED:150")
    print(f"BOUNDED:150: {result.reads} reads, replica share {result.replica_share:.2f}, "
          f"stale {result.stale_replica_reads}, max staleness {result.max_staleness_ms:.0f} ms")
    assert result.reads > 100
    assert result.max_staleness_ms <= 150 + LAG_READING_SLACK_MS
    assert result.replica_reads > 0


async def test_eventual_keeps_reading_from_the_replica_and_counts_stale_reads(pg_cluster):
    result = await check(pg_cluster, "EVENTUAL")
    print(f"EVENTUAL: {result.reads} reads, replica share {result.replica_share:.2f}, "
          f"stale {result.stale_replica_reads}, max staleness {result.max_staleness_ms:.0f} ms")
    assert result.replica_share > 0.9
    assert result.stale_replica_reads > 0   # the pause makes it visible
