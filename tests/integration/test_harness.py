"""The test harness itself: a real primary, a real streaming hot standby, real password auth."""

from __future__ import annotations

import asyncio
import secrets
import time

import asyncpg
import pytest

pytestmark = pytest.mark.integration

REPLICATION_TIMEOUT_S = 15


async def connect(server, **overrides) -> asyncpg.Connection:
    params = dict(host=server.host, port=server.port, user=server.user, password=server.password,
                  database=server.dbname, ssl=False, timeout=10)
    params.update(overrides)
    return await asyncpg.connect(**params)


async def test_primary_is_not_in_recovery(pg_cluster):
    conn = await connect(pg_cluster.primary)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        assert await conn.fetchval("SELECT inet_server_port()") == pg_cluster.primary.port
    finally:
        await conn.close()


async def test_replica_is_a_hot_standby(pg_cluster):
    assert pg_cluster.replicas, "the harness must provide at least one replica"
    for replica in pg_cluster.replicas:
        conn = await connect(replica)
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
            assert await conn.fetchval("SELECT inet_server_port()") == replica.port
        finally:
            await conn.close()


async def test_write_on_primary_streams_to_replica(pg_cluster):
    table = f"harness_probe_{secrets.token_hex(4)}"
    token = secrets.token_hex(8)
    primary = await connect(pg_cluster.primary)
    try:
        await primary.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, token text NOT NULL)")
        await primary.execute(f"INSERT INTO {table} (token) VALUES ($1)", token)
        for replica_server in pg_cluster.replicas:
            replica = await connect(replica_server)
            try:
                deadline = time.monotonic() + REPLICATION_TIMEOUT_S
                while True:
                    try:
                        seen = await replica.fetchval(f"SELECT token FROM {table} WHERE id = 1")
                    except asyncpg.UndefinedTableError:
                        seen = None  # the CREATE TABLE has not been replayed yet
                    if seen == token:
                        break
                    assert time.monotonic() < deadline, f"row not visible on replica port {replica_server.port}"
                    await asyncio.sleep(0.05)
                with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                    await replica.execute(f"INSERT INTO {table} (token) VALUES ('nope')")
            finally:
                await replica.close()
    finally:
        await primary.execute(f"DROP TABLE IF EXISTS {table}")
        await primary.close()


async def test_wrong_password_is_refused(pg_cluster):
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(pg_cluster.primary, password=pg_cluster.primary.password + "-wrong")


async def test_missing_password_is_refused(pg_cluster):
    # asyncpg would fall back to ~/.pgpass or PGPASSWORD; an empty string means "no password".
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await connect(pg_cluster.primary, password="", passfile="/nonexistent")


def test_dsn_round_trips(pg_cluster):
    from pgcluster import PgServer

    parsed = PgServer.from_dsn(pg_cluster.primary.dsn, "primary")
    assert (parsed.host, parsed.port, parsed.user, parsed.password, parsed.dbname) == (
        pg_cluster.primary.host, pg_cluster.primary.port, pg_cluster.primary.user,
        pg_cluster.primary.password, pg_cluster.primary.dbname)
