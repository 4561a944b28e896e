"""The stale-read audit against the real primary + standby: replica answers
re-run on the primary are found stale while replay is paused, and not once it
has caught up."""
import asyncio

import asyncpg
import psycopg

from clidash.config import build_proxy_config
from clidash.proxy.pg.server import PgProxy
from pgcluster import free_port


async def reads(dsn, rounds, prepared):
    """`rounds` simple-protocol reads (asyncpg execute), then `rounds` extended-protocol
    reads (psycopg: unnamed statements, or named prepared ones)."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(rounds):
            await conn.execute("SELECT v FROM audit_t WHERE id = 1")
    finally:
        await conn.close()
    threshold = 0 if prepared else None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=threshold) as pconn:
        for _ in range(rounds):
            await pconn.execute("SELECT v FROM audit_t WHERE id = %s", (1,))


def totals(proxy):
    audited = sum(v[1] for v in proxy.stats.route_extras.values())
    stale = sum(v[2] for v in proxy.stats.route_extras.values())
    return audited, stale


async def settle(proxy, expected_audits, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if totals(proxy)[0] >= expected_audits:
            return
        await asyncio.sleep(0.05)


async def test_audit_finds_stale_replica_answers_only_while_replay_is_paused(pg_cluster):
    primary = await asyncpg.connect(pg_cluster.primary.dsn)
    replica = await asyncpg.connect(pg_cluster.replicas[0].dsn)
    await primary.execute("CREATE TABLE IF NOT EXISTS audit_t (id int PRIMARY KEY, v int)")
    await primary.execute("INSERT INTO audit_t VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET v = 0")
    port = free_port()
    proxy = PgProxy(build_proxy_config("postgresql", f"127.0.0.1:{port}", pg_cluster.primary.dsn,
                                       [r.dsn for r in pg_cluster.replicas], "audit", "EVENTUAL",
                                       audit_rate=1.0))
    await proxy.start()
    p = pg_cluster.primary
    dsn = f"postgresql://{p.user}:{p.password}@127.0.0.1:{port}/{p.dbname}"
    try:
        for _ in range(100):   # the standby has the row
            if await replica.fetchval("SELECT v FROM audit_t WHERE id = 1") == 0:
                break
            await asyncio.sleep(0.05)
        await reads(dsn, 10, prepared=False)
        await settle(proxy, 20)
        assert totals(proxy) == (20, 0)            # caught up: nothing stale

        await replica.execute("SELECT pg_wal_replay_pause()")
        await primary.execute("UPDATE audit_t SET v = 1 WHERE id = 1")
        await reads(dsn, 10, prepared=True)
        await settle(proxy, 39)
        await asyncio.sleep(0.2)
        audited, stale = totals(proxy)
        # Every replica answer since the update was stale. A first prepared execution that
        # parses its named statement in the same batch is not audited.
        assert audited in (39, 40) and stale == audited - 20
        assert proxy.stats.errors["stale_audit"] == 0
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await proxy.close()
        await primary.close()
        await replica.close()
