"""Session state across backends and per-route timing, with the proxy running
in this process (so the test can read its in-memory statistics) in front of the
real primary + hot standby."""
import asyncio

import asyncpg
import psycopg
import pytest

from clidash.config import build_proxy_config
from clidash.proxy.pg.server import PgProxy
from pgcluster import free_port

WHERE = "SELECT pg_is_in_recovery()"


@pytest.fixture
async def proxy(pg_cluster):
    port = free_port()
    config = build_proxy_config("postgresql", f"127.0.0.1:{port}", pg_cluster.primary.dsn,
                                [r.dsn for r in pg_cluster.replicas], "session-test", "EVENTUAL")
    server = PgProxy(config)
    await server.start()
    p = pg_cluster.primary
    server.dsn = f"postgresql://{p.user}:{p.password}@127.0.0.1:{port}/{p.dbname}"
    yield server
    await server.close()


async def test_set_in_a_rolled_back_transaction_is_not_replayed(proxy):
    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        await conn.execute("SET application_name = 'kept'")
        await conn.execute("BEGIN")
        await conn.execute("SET application_name = 'rolled_back'")
        await conn.execute("ROLLBACK")
        await conn.execute("BEGIN")
        await conn.execute("SET search_path = committed_path, public")
        await conn.execute("COMMIT")
        row = await conn.fetchrow("SELECT current_setting('application_name') AS app, "
                                  "current_setting('search_path') AS path, pg_is_in_recovery() AS standby")
        assert row["standby"] is True
        assert row["app"] == "kept"
        assert row["path"] == "committed_path, public"
    finally:
        await conn.close()


async def test_begin_then_set_transaction_read_only_runs_on_a_replica(proxy):
    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        await conn.execute("BEGIN")
        await conn.execute("SET TRANSACTION READ ONLY")
        assert await conn.fetchval(WHERE) is True
        assert await conn.fetchval("SELECT current_setting('transaction_read_only')") == "on"
        await conn.execute("COMMIT")
        await conn.execute("BEGIN")
        assert await conn.fetchval(WHERE) is False       # a plain transaction: the primary
        await conn.execute("COMMIT")
    finally:
        await conn.close()


async def one(conn, sql, params=None):
    cur = await conn.execute(sql, params)
    return await cur.fetchone()


async def test_discard_all_is_replayed_so_prepared_names_can_be_reused(proxy):
    # (async psycopg: the proxy runs on this thread's event loop)
    async with await psycopg.AsyncConnection.connect(proxy.dsn, autocommit=True, prepare_threshold=0) as conn:
        for i in range(3):
            assert await one(conn, "SELECT %s::int + 1, pg_is_in_recovery()", (i,)) == (i + 1, True)
        await conn.execute("SET application_name = 'before_discard'")
        await conn.execute("DISCARD ALL")
        # psycopg forgets its statements and prepares the same names again on the replica.
        for i in range(3):
            assert await one(conn, "SELECT %s::int + 2, pg_is_in_recovery()", (i,)) == (i + 2, True)
        assert await one(conn, "SELECT current_setting('application_name'), pg_is_in_recovery()") == ("", True)


async def test_deallocate_all_is_replayed(proxy):
    async with await psycopg.AsyncConnection.connect(proxy.dsn, autocommit=True, prepare_threshold=0) as conn:
        assert await one(conn, "SELECT %s::text, pg_is_in_recovery()", ("a",)) == ("a", True)
        await conn.execute("DEALLOCATE ALL")
        assert await one(conn, "SELECT %s::text, pg_is_in_recovery()", ("b",)) == ("b", True)


async def test_statement_prepared_on_the_replica_runs_on_the_primary_in_a_transaction(proxy):
    conn = await asyncpg.connect(proxy.dsn)
    try:
        stmt = await conn.prepare("SELECT $1::int * 2, pg_is_in_recovery()")
        assert tuple(await stmt.fetchrow(21)) == (42, True)
        async with conn.transaction():
            # Prepared lazily on the primary before it first runs there.
            assert tuple(await stmt.fetchrow(5)) == (10, False)
        assert tuple(await stmt.fetchrow(1)) == (2, True)
    finally:
        await conn.close()


async def test_statements_are_timed_per_route_operation_and_target(proxy, pg_cluster):
    direct = await asyncpg.connect(pg_cluster.primary.dsn)
    await direct.execute("CREATE TABLE IF NOT EXISTS timing_t (id int)")
    await direct.close()
    await asyncio.sleep(0.3)
    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        for i in range(25):
            await conn.execute(f"SELECT count(*) FROM timing_t WHERE id = {i}")
        for i in range(7):
            await conn.execute(f"INSERT INTO timing_t VALUES ({i})")
    finally:
        await conn.close()
    read_route = proxy.classifier.classify("SELECT count(*) FROM timing_t WHERE id = 1").route_id
    write_route = proxy.classifier.classify("INSERT INTO timing_t VALUES (1)").route_id
    stats = proxy.stats.histograms
    reads = stats[("session-test", read_route, "read", "replica")]
    writes = stats[("session-test", write_route, "write", "primary")]
    assert (reads.count, writes.count) == (25, 7)
    assert reads.reasons == {"replica": 25}
    assert 0 < reads.sum < 25 and 0 < writes.sum < 7
    assert ("session-test", read_route, "read", "primary") not in stats
