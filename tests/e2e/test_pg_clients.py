"""Real PostgreSQL clients through the proxy against a real primary + streaming hot standby.

Every routing assertion is read from the server that ran the statement: `pg_is_in_recovery()`
and `inet_server_port()` evaluated by the statement itself (or by its transaction). Results are
compared with what a direct connection to the primary returns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import os
import re
import shutil
import subprocess
import time

import secrets

import asyncpg
import psycopg
import pytest

pytestmark = pytest.mark.e2e

# Evaluated by the server that runs it: (False, primary port) or (True, replica port).
WHERE_SQL = "SELECT pg_is_in_recovery(), inet_server_port()"

CLIENT_TIMEOUT_S = 60


# --------------------------------------------------------------------------- helpers


def _run_tool(cmd: list[str], input: str | None = None, timeout: float = CLIENT_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "10"})


def psql(dsn: str, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """psql -X -A -t -q with ON_ERROR_STOP; fails the test (with stderr) on a non-zero exit when check."""
    proc = _run_tool(["psql", dsn, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *args], input=input)
    if check:
        assert proc.returncode == 0, f"psql exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def unique_name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def rows_of(output: str) -> list[list[str]]:
    return [line.split("|") for line in output.splitlines() if line]


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: these tests need the PostgreSQL client tools "
                    "(Debian: apt-get install postgresql-client postgresql-contrib)")


async def aconnect(proxy, **kwargs) -> asyncpg.Connection:
    """asyncpg through the proxy; a statement that gets no answer fails the test instead of hanging it."""
    return await asyncpg.connect(proxy.dsn(), timeout=10, command_timeout=15, **kwargs)


# =========================================================================== psql


def test_psql_read_eventual_runs_on_replica(eventual_proxy, direct, table_factory):
    need("psql")
    table = table_factory()
    direct.primary.execute(f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, 20) g")
    direct.wait_replica()

    out = psql(eventual_proxy.dsn(), "-c", WHERE_SQL).stdout
    assert direct.where(*rows_of(out)[0]) == "replica"

    query = f"SELECT id, v, pg_is_in_recovery(), inet_server_port() FROM {table} ORDER BY id"
    via_proxy = rows_of(psql(eventual_proxy.dsn(), "-c", query).stdout)
    via_primary = rows_of(psql(direct.primary_server.dsn, "-c", query).stdout)
    assert [r[:2] for r in via_proxy] == [r[:2] for r in via_primary]
    assert len(via_proxy) == 20
    assert {direct.where(r[2], r[3]) for r in via_proxy} == {"replica"}


def test_psql_read_strong_runs_on_primary(strong_proxy, direct):
    need("psql")
    out = psql(strong_proxy.dsn(), "-c", WHERE_SQL).stdout
    assert direct.where(*rows_of(out)[0]) == "primary"


def test_psql_multi_statement_transaction_runs_on_primary(eventual_proxy, direct):
    """`BEGIN; SELECT ...; COMMIT` in one -c is one simple Query holding a read-write transaction."""
    need("psql")
    out = psql(eventual_proxy.dsn(), "-c", f"BEGIN; {WHERE_SQL}; COMMIT").stdout
    rows = rows_of(out)
    assert len(rows) == 1, out
    assert direct.where(*rows[0]) == "primary"
    # ...and the session is not left inside a transaction or pinned: the next read is a replica read.
    out = psql(eventual_proxy.dsn(), "-c", "BEGIN; SELECT 1; COMMIT", "-c", WHERE_SQL).stdout
    assert direct.where(*rows_of(out)[-1]) == "replica"


def test_psql_writes_land_on_primary(eventual_proxy, direct):
    need("psql")
    table = unique_name("e2e_psql_w")
    dsn = eventual_proxy.dsn()
    try:
        psql(dsn, "-c", f"CREATE TABLE {table} (id int PRIMARY KEY, v text); "
                        f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two')")
        out = psql(dsn, "-c", f"INSERT INTO {table} VALUES (3, 'three') "
                              f"RETURNING pg_is_in_recovery(), inet_server_port()").stdout
        assert direct.where(*rows_of(out)[0]) == "primary"
        psql(dsn, "-c", f"UPDATE {table} SET v = upper(v) WHERE id = 2", "-c", f"DELETE FROM {table} WHERE id = 1")
        assert direct.primary_all(f"SELECT id, v FROM {table} ORDER BY id") == [(2, "TWO"), (3, "three")]
    finally:
        direct.primary.execute(f"DROP TABLE IF EXISTS {table}")


def test_psql_copy_in_and_out(eventual_proxy, direct, table_factory):
    need("psql")
    table = table_factory("id int PRIMARY KEY, v text")
    expected = [(i, f'value {i}, "quoted" \\ back') for i in range(1, 151)]
    csv_text = "".join(f'{i},"{v.replace(chr(34), chr(34) * 2)}"\n' for i, v in expected)

    psql(eventual_proxy.dsn(), "-c", f"\\copy {table} (id, v) FROM pstdin WITH (FORMAT csv)", input=csv_text)
    assert direct.primary_all(f"SELECT id, v FROM {table} ORDER BY id") == expected

    direct.wait_replica()
    copy_out = (f"\\copy (SELECT id, v, pg_is_in_recovery(), inet_server_port() FROM {table} ORDER BY id) "
                f"TO STDOUT WITH (FORMAT csv)")
    via_proxy = psql(eventual_proxy.dsn(), "-c", copy_out).stdout.splitlines()
    via_primary = psql(direct.primary_server.dsn, "-c", copy_out).stdout.splitlines()
    assert len(via_proxy) == len(expected)
    strip = lambda line: line.rsplit(",", 2)[0]  # noqa: E731  (drop the where-columns)
    assert [strip(line) for line in via_proxy] == [strip(line) for line in via_primary]
    assert {direct.where(*line.rsplit(",", 2)[1:]) for line in via_proxy} == {"replica"}


# =========================================================================== pgbench


PGBENCH_SCALE_ACCOUNTS = 100_000  # -s 1


@pytest.fixture(scope="module")
def pgbench_tables(direct):
    """pgbench -i -s 1 directly on the primary, replayed by the standby."""
    need("pgbench")
    proc = _run_tool(["pgbench", "-i", "-s", "1", "-q", direct.primary_server.dsn], timeout=120)
    assert proc.returncode == 0, f"pgbench -i failed:\n{proc.stdout}\n{proc.stderr}"
    direct.wait_replica(timeout=30)
    assert direct.replica_one("SELECT count(*) FROM pgbench_accounts") == PGBENCH_SCALE_ACCOUNTS
    yield
    direct.primary.execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")


def _pgbench_processed(output: str) -> tuple[int, int]:
    match = re.search(r"number of transactions actually processed: (\d+)/(\d+)", output)
    assert match, f"no transaction count in pgbench output:\n{output}"
    return int(match.group(1)), int(match.group(2))


def _pgbench_failed(output: str) -> int:
    match = re.search(r"number of failed transactions: (\d+)", output)
    return int(match.group(1)) if match else 0


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_tpcb(protocol, pgbench_tables, eventual_proxy, direct):
    history_before = direct.primary_one("SELECT count(*) FROM pgbench_history")
    proc = _run_tool(["pgbench", "-n", "-M", protocol, "-c", "4", "-j", "2", "-t", "50", eventual_proxy.dsn()])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pgbench -M {protocol} exited {proc.returncode}:\n{output}"
    assert _pgbench_processed(output) == (200, 200), output
    assert _pgbench_failed(output) == 0, output
    # Every transaction's writes landed on the primary, and atomically: balances match the history.
    assert direct.primary_one("SELECT count(*) FROM pgbench_history") == history_before + 200
    history_delta = direct.primary_one("SELECT coalesce(sum(delta), 0) FROM pgbench_history")
    assert direct.primary_one("SELECT sum(abalance) FROM pgbench_accounts") == history_delta
    assert direct.primary_one("SELECT sum(bbalance) FROM pgbench_branches") == history_delta
    assert direct.primary_one("SELECT sum(tbalance) FROM pgbench_tellers") == history_delta


def _accounts_index_scans(conn) -> int:
    return conn.execute("SELECT coalesce(sum(idx_scan), 0) FROM pg_stat_user_tables "
                        "WHERE relname = 'pgbench_accounts'").fetchone()[0]


def test_pgbench_select_only_prepared_reads_on_replica(pgbench_tables, eventual_proxy, direct):
    replica_before = _accounts_index_scans(direct.replica)
    primary_before = _accounts_index_scans(direct.primary)
    proc = _run_tool(["pgbench", "-n", "-S", "-M", "prepared", "-c", "4", "-t", "200", eventual_proxy.dsn()])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"pgbench -S exited {proc.returncode}:\n{output}"
    assert _pgbench_processed(output) == (800, 800), output

    # Table statistics reach the shared stats only when a backend flushes them (at most once a
    # second while busy, at exit, or after an idle timeout of up to 10 s), so poll.
    deadline = time.monotonic() + 12
    while True:
        replica_scans = _accounts_index_scans(direct.replica) - replica_before
        if replica_scans >= 800 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    # (The primary's count is only reported: late flushes of the TPC-B runs' stats can land in it.)
    primary_scans = _accounts_index_scans(direct.primary) - primary_before
    assert replica_scans >= 800, (f"the standby ran {replica_scans} index scans of pgbench_accounts for 800 "
                                  f"select-only transactions (primary: {primary_scans})")


# =========================================================================== asyncpg


async def aclose(conn: asyncpg.Connection) -> None:
    """Close politely; a connection stuck behind an unanswered statement is dropped instead."""
    try:
        await conn.close(timeout=2)
    except Exception:
        conn.terminate()


async def test_asyncpg_statement_cache_reads_on_replica(eventual_proxy, direct, table_factory):
    table = table_factory()
    direct.primary.execute(f"INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 50) g")
    direct.wait_replica()
    conn = await aconnect(eventual_proxy)
    try:
        for i in range(6):  # one prepared statement, cached by asyncpg, executed with different args
            row = await conn.fetchrow("SELECT $1::int * 2 AS doubled, pg_is_in_recovery() AS rec, "
                                      "inet_server_port() AS port", i)
            assert row["doubled"] == 2 * i
            assert direct.where(row["rec"], row["port"]) == "replica"
        for low in (0, 10, 45, 10, 0):
            got = await conn.fetch(f"SELECT id, v FROM {table} WHERE id > $1 ORDER BY id", low)
            assert [tuple(r) for r in got] == direct.primary_all(
                f"SELECT id, v FROM {table} WHERE id > %s ORDER BY id", (low,))

        # An explicitly prepared statement keeps working across a write on the same session.
        stmt = await conn.prepare("SELECT $1::text || '!' AS s, pg_is_in_recovery(), inet_server_port()")
        first = await stmt.fetchrow("a")
        status = await conn.execute(f"INSERT INTO {table} VALUES (1000, 'w')")
        assert status == "INSERT 0 1"
        second = await stmt.fetchrow("b")
        assert (first["s"], second["s"]) == ("a!", "b!")
        assert direct.where(first[1], first[2]) == "replica"
        assert direct.where(second[1], second[2]) == "replica"
        assert direct.primary_one(f"SELECT v FROM {table} WHERE id = 1000") == "w"
    finally:
        await aclose(conn)


async def test_asyncpg_readonly_transaction_runs_on_replica(eventual_proxy, direct):
    conn = await aconnect(eventual_proxy)
    try:
        async with conn.transaction(readonly=True):
            a = await conn.fetchrow(f"{WHERE_SQL}, now(), pg_backend_pid()")
            await asyncio.sleep(0.05)
            b = await conn.fetchrow(f"{WHERE_SQL}, now(), pg_backend_pid()")
        assert direct.where(a[0], a[1]) == "replica"
        # one transaction on one backend: same transaction start time, same server process
        assert (a[2], a[3]) == (b[2], b[3])
    finally:
        await aclose(conn)


async def test_asyncpg_read_write_transaction_runs_on_primary(eventual_proxy, direct):
    conn = await aconnect(eventual_proxy)
    try:
        async with conn.transaction():
            a = await conn.fetchrow(f"{WHERE_SQL}, now(), pg_backend_pid()")
            b = await conn.fetchrow(f"{WHERE_SQL}, now(), pg_backend_pid()")
        assert direct.where(a[0], a[1]) == "primary"
        assert (a[2], a[3]) == (b[2], b[3])
        after = await conn.fetchrow(WHERE_SQL)  # the transaction is over: reads go back to the replica
        assert direct.where(*after) == "replica"
    finally:
        await aclose(conn)


async def test_asyncpg_session_settings_follow_client_to_replica(eventual_proxy, direct):
    schema = unique_name("e2e_sp")
    app_name = unique_name("e2e_app")
    direct.primary.execute(f"CREATE SCHEMA {schema}")
    direct.primary.execute(f"CREATE TABLE {schema}.marker (x text)")
    direct.primary.execute(f"INSERT INTO {schema}.marker VALUES ('in {schema}')")
    direct.wait_replica()
    conn = await aconnect(eventual_proxy)
    try:
        app_before = await conn.fetchval("SHOW application_name")
        await conn.execute(f"SET search_path = {schema}, public")
        await conn.execute(f"SET application_name = '{app_name}'")
        row = await conn.fetchrow("SELECT current_setting('application_name') AS app, "
                                  "(SELECT x FROM marker) AS marker, pg_is_in_recovery(), inet_server_port()")
        assert direct.where(row[2], row[3]) == "replica"
        assert row["app"] == app_name
        assert row["marker"] == f"in {schema}"  # unqualified name resolved through the SET search_path
        assert await conn.fetchval("SHOW application_name") == app_name
        # The replica's own view of its sessions shows the setting.
        assert direct.replica_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                  (app_name,)) >= 1

        await conn.execute("RESET application_name")
        row = await conn.fetchrow("SELECT current_setting('application_name'), pg_is_in_recovery(), "
                                  "inet_server_port()")
        assert direct.where(row[1], row[2]) == "replica"
        assert row[0] == app_before
    finally:
        await aclose(conn)
        direct.primary.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_asyncpg_pool_mixed_acquires(eventual_proxy, direct, table_factory):
    table = table_factory("id int PRIMARY KEY, in_recovery bool, port int")
    pool = await asyncpg.create_pool(eventual_proxy.dsn(), min_size=2, max_size=2, timeout=10,
                                     command_timeout=15)
    places: dict[str, list[str]] = {"read": [], "write": [], "tx": [], "set": []}
    inserted: list[int] = []

    async def use(i: int) -> None:
        async with pool.acquire() as conn:
            app = await conn.fetchval("SHOW application_name")
            assert not app.startswith("e2e_leak"), f"acquire {i}: a SET of an earlier acquire leaked: {app!r}"
            kind = i % 5
            if kind in (0, 1):
                places["read"].append(direct.where(*await conn.fetchrow(WHERE_SQL)))
            elif kind == 2:
                row = await conn.fetchrow(f"INSERT INTO {table} VALUES ($1, pg_is_in_recovery(), "
                                          f"inet_server_port()) RETURNING in_recovery, port", i)
                places["write"].append(direct.where(*row))
                inserted.append(i)
            elif kind == 3:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {table} VALUES ($1, pg_is_in_recovery(), inet_server_port())", i)
                    seen = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", i)
                    assert seen == 1, "a read inside the transaction did not see its own write"
                    places["tx"].append(direct.where(*await conn.fetchrow(WHERE_SQL)))
                inserted.append(i)
            else:
                await conn.execute(f"SET application_name = 'e2e_leak_{i}'")
                row = await conn.fetchrow(f"SELECT current_setting('application_name'), {WHERE_SQL[7:]}")
                assert row[0] == f"e2e_leak_{i}"
                places["set"].append(direct.where(row[1], row[2]))

    try:
        await asyncio.wait_for(asyncio.gather(*(use(i) for i in range(50))), 60)
    finally:
        try:
            await asyncio.wait_for(pool.close(), 5)
        except Exception:
            pool.terminate()
    assert set(places["write"]) == {"primary"} and set(places["tx"]) == {"primary"}, places
    assert set(places["read"]) == {"replica"}, places  # the pool's reset on release does not pin the session
    assert set(places["set"]) == {"replica"}, places
    assert direct.primary_all(f"SELECT id FROM {table} ORDER BY id") == [(i,) for i in sorted(inserted)]
    assert direct.primary_one(f"SELECT count(*) FROM {table} WHERE in_recovery OR port <> %s",
                              (direct.primary_server.port,)) == 0


async def test_asyncpg_copy_records_lands_on_primary(eventual_proxy, direct, table_factory):
    table = table_factory("id int PRIMARY KEY, v text, at timestamptz")
    base = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    records = [(i, f"r{i}", base + dt.timedelta(minutes=i)) for i in range(1, 201)]
    conn = await aconnect(eventual_proxy)
    try:
        try:
            status = await conn.copy_records_to_table(table, records=records, columns=["id", "v", "at"],
                                                       timeout=10)
        except asyncio.TimeoutError:
            # asyncpg sends its binary CopyData right behind the COPY Query, without waiting for
            # CopyInResponse; the proxy must forward them in order to the backend that runs the COPY.
            pytest.fail("copy_records_to_table got no answer within 10 s")
        assert status == "COPY 200"
        assert direct.primary_all(f"SELECT id, v, at FROM {table} ORDER BY id") == records

        direct.wait_replica()
        out = io.BytesIO()
        await conn.copy_from_query(f"SELECT id, v, at, pg_is_in_recovery() FROM {table} ORDER BY id",
                                   output=out, format="csv")
        lines = out.getvalue().decode().splitlines()
        direct_out = io.StringIO()
        with direct.primary.cursor().copy(f"COPY (SELECT id, v, at FROM {table} ORDER BY id) TO STDOUT "
                                          f"WITH (FORMAT csv)") as copy:
            for block in copy:
                direct_out.write(bytes(block).decode())
        assert [line.rsplit(",", 1)[0] for line in lines] == direct_out.getvalue().splitlines()
        assert {line.rsplit(",", 1)[1] for line in lines} == {"t"}  # COPY ... TO STDOUT ran on the standby
    finally:
        await aclose(conn)


async def test_asyncpg_temp_table_pins_session_to_primary(eventual_proxy, direct):
    conn = await aconnect(eventual_proxy)
    other = await aconnect(eventual_proxy)
    try:
        assert direct.where(*await conn.fetchrow(WHERE_SQL)) == "replica"
        await conn.execute("CREATE TEMP TABLE e2e_tmp (x int)")
        await conn.execute("INSERT INTO e2e_tmp VALUES (1), (2), (3)")
        assert await conn.fetchval("SELECT count(*) FROM e2e_tmp") == 3  # the temp table exists only there
        for _ in range(3):
            assert direct.where(*await conn.fetchrow(WHERE_SQL)) == "primary"
        assert await conn.fetchval("SELECT sum(x) FROM e2e_tmp") == 6
        # other sessions are not pinned
        assert direct.where(*await other.fetchrow(WHERE_SQL)) == "replica"
    finally:
        await aclose(conn)
        await aclose(other)


async def test_asyncpg_listen_notify(eventual_proxy, direct):
    channel = unique_name("e2e_chan")
    listener = await aconnect(eventual_proxy)
    notifier = await aconnect(eventual_proxy)
    received: asyncio.Queue = asyncio.Queue()
    try:
        await listener.add_listener(channel, lambda _c, _pid, ch, payload: received.put_nowait((ch, payload)))
        await notifier.execute(f"NOTIFY {channel}, 'through the proxy'")
        assert await asyncio.wait_for(received.get(), 5) == (channel, "through the proxy")

        direct.primary.execute(f"NOTIFY {channel}, 'straight to the primary'")
        assert await asyncio.wait_for(received.get(), 5) == (channel, "straight to the primary")

        # The listening session answers queries normally (from the primary, where it listens).
        assert direct.where(*await listener.fetchrow(WHERE_SQL)) == "primary"
        await notifier.execute("SELECT pg_notify($1, $2)", channel, "via pg_notify")
        assert await asyncio.wait_for(received.get(), 5) == (channel, "via pg_notify")
    finally:
        await aclose(listener)
        await aclose(notifier)


# =========================================================================== psycopg 3


def test_psycopg_server_side_binding(eventual_proxy, direct):
    with psycopg.connect(eventual_proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT %s::int + 1, %s::text, pg_is_in_recovery(), inet_server_port()",
                           (41, "héllo wörld")).fetchone()
        assert row[:2] == (42, "héllo wörld")
        assert direct.where(row[2], row[3]) == "replica"

        cur = conn.cursor(binary=True)
        row = cur.execute("SELECT %s::int, %b::bytea, %s::numeric * 2", (None, b"\x00\xff\x10", 1.25)).fetchone()
        assert row == (None, b"\x00\xff\x10", pytest.approx(2.5))


def test_psycopg_prepared_statements(eventual_proxy, direct, table_factory):
    table = table_factory()
    direct.primary.execute(f"INSERT INTO {table} SELECT g, 'p' || g FROM generate_series(1, 30) g")
    direct.wait_replica()
    query = f"SELECT id, v, pg_is_in_recovery(), inet_server_port() FROM {table} WHERE id <= %s ORDER BY id"
    with psycopg.connect(eventual_proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        for n in (3, 7, 3, 30, 1, 12):
            rows = conn.execute(query, (n,), prepare=True).fetchall()
            assert [r[:2] for r in rows] == direct.primary_all(
                f"SELECT id, v FROM {table} WHERE id <= %s ORDER BY id", (n,))
            assert {direct.where(r[2], r[3]) for r in rows} == {"replica"}
        # psycopg's automatic preparation after prepare_threshold executions, interleaved with writes
        conn.prepare_threshold = 2
        for i in range(6):
            row = conn.execute(f"SELECT %s::int * 3, {WHERE_SQL[7:]}", (i,)).fetchone()
            assert row[0] == 3 * i and direct.where(row[1], row[2]) == "replica"
            conn.execute(f"INSERT INTO {table} VALUES (%s, 'auto')", (100 + i,))
        assert direct.primary_one(f"SELECT count(*) FROM {table} WHERE v = 'auto'") == 6


def test_psycopg_transactions_read_only_vs_read_write(eventual_proxy, direct):
    with psycopg.connect(eventual_proxy.dsn(), connect_timeout=10) as conn:  # not autocommit: BEGIN first
        conn.read_only = True
        row = conn.execute(WHERE_SQL).fetchone()
        conn.commit()
        assert direct.where(*row) == "replica"
        conn.read_only = False
        row = conn.execute(WHERE_SQL).fetchone()
        conn.commit()
        assert direct.where(*row) == "primary"


def test_psycopg_pipeline(eventual_proxy, direct, table_factory):
    table = table_factory()
    with psycopg.connect(eventual_proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        with conn.pipeline():
            inserts = [conn.execute(f"INSERT INTO {table} VALUES (%s, %s) "
                                    f"RETURNING id, pg_is_in_recovery(), inet_server_port()", (i, f"p{i}"))
                       for i in range(1, 6)]
            count = conn.execute(f"SELECT count(*) FROM {table}")
            where = conn.execute(WHERE_SQL)
        assert [c.fetchone()[0] for c in inserts] == [1, 2, 3, 4, 5]
        for cur in inserts:
            cur.scroll(0, "absolute")
            _, rec, port = cur.fetchone()
            assert direct.where(rec, port) == "primary"
        # Same implicit transaction (no Sync in between): the read sees the rows inserted before it.
        assert count.fetchone()[0] == 5
        assert direct.where(*where.fetchone()) == "primary"
        assert direct.primary_all(f"SELECT id, v FROM {table} ORDER BY id") == [(i, f"p{i}") for i in range(1, 6)]

        direct.wait_replica()
        with conn.pipeline():
            reads = [conn.execute(f"SELECT id, v FROM {table} WHERE id >= %s ORDER BY id", (k,)) for k in (1, 3, 5)]
            where = conn.execute(WHERE_SQL)
        for k, cur in zip((1, 3, 5), reads):
            assert cur.fetchall() == [(i, f"p{i}") for i in range(k, 6)]
        assert direct.where(*where.fetchone()) == "replica"


def test_psycopg_copy(eventual_proxy, direct, table_factory):
    table = table_factory("id int PRIMARY KEY, v text")
    expected = [(i, f"c{i}\ttab, comma") for i in range(1, 101)]
    with psycopg.connect(eventual_proxy.dsn(), autocommit=True, connect_timeout=10) as conn:
        with conn.cursor().copy(f"COPY {table} (id, v) FROM STDIN") as copy:
            for record in expected:
                copy.write_row(record)
        assert direct.primary_all(f"SELECT id, v FROM {table} ORDER BY id") == expected

        direct.wait_replica()
        with conn.cursor().copy(f"COPY (SELECT id, v, pg_is_in_recovery(), inet_server_port() "
                                f"FROM {table} ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "bool", "int4"])
            rows = list(copy.rows())
        assert [r[:2] for r in rows] == expected
        assert {direct.where(r[2], r[3]) for r in rows} == {"replica"}

        with conn.cursor().copy(f"COPY {table} TO STDOUT") as copy:
            via_proxy = b"".join(bytes(block) for block in copy)
    with direct.primary.cursor().copy(f"COPY {table} TO STDOUT") as copy:
        via_primary = b"".join(bytes(block) for block in copy)
    assert via_proxy == via_primary


# =========================================================================== SQLAlchemy


def _sa_url(proxy, driver: str) -> str:
    return proxy.dsn().replace("postgresql://", f"postgresql+{driver}://", 1)


def _sa_table(name: str):
    from sqlalchemy import Column, Integer, MetaData, String, Table

    metadata = MetaData()
    return metadata, Table(name, metadata, Column("id", Integer, primary_key=True), Column("name", String(50)))


def test_sqlalchemy_psycopg(eventual_proxy, direct):
    from sqlalchemy import create_engine, insert, select, text
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column
    from sqlalchemy import Integer, String

    name = unique_name("e2e_sa_pg")
    metadata, table = _sa_table(name)
    expected = [(i, f"name {i}") for i in range(1, 21)]
    engine = create_engine(_sa_url(eventual_proxy, "psycopg"), pool_size=2)
    try:
        metadata.create_all(engine)
        with engine.begin() as c:
            c.execute(insert(table), [{"id": i, "name": n} for i, n in expected])
            assert direct.where(*c.execute(text(WHERE_SQL)).one()) == "primary"
        with engine.connect() as c:  # a plain (read-write) transaction: primary, sees the commit at once
            assert [tuple(r) for r in c.execute(select(table).order_by(table.c.id))] == expected
            assert direct.where(*c.execute(text(WHERE_SQL)).one()) == "primary"
        assert direct.primary_all(f"SELECT id, name FROM {name} ORDER BY id") == expected

        direct.wait_replica()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            assert direct.where(*c.execute(text(WHERE_SQL)).one()) == "replica"
            assert [tuple(r) for r in c.execute(select(table).order_by(table.c.id))] == expected
        with engine.connect().execution_options(postgresql_readonly=True) as c:
            assert direct.where(*c.execute(text(WHERE_SQL)).one()) == "replica"
            assert [tuple(r) for r in c.execute(select(table).order_by(table.c.id))] == expected

        # ORM: a mapped class on its own table, unit of work through the proxy
        class Base(DeclarativeBase):
            pass

        orm_name = unique_name("e2e_sa_orm")
        Item = type("Item", (Base,), {"__tablename__": orm_name,
                                       "id": mapped_column(Integer, primary_key=True),
                                       "label": mapped_column(String(40))})
        Base.metadata.create_all(engine)
        try:
            with Session(engine) as session:
                session.add_all([Item(id=i, label=f"item {i}") for i in range(1, 6)])
                session.commit()
                session.get(Item, 3).label = "changed"
                session.commit()
            with Session(engine) as session:
                got = [(it.id, it.label) for it in session.scalars(select(Item).order_by(Item.id))]
            assert got == direct.primary_all(f"SELECT id, label FROM {orm_name} ORDER BY id")
            assert dict(got)[3] == "changed"
        finally:
            Base.metadata.drop_all(engine)
    finally:
        metadata.drop_all(engine)
        engine.dispose()


async def test_sqlalchemy_asyncpg(eventual_proxy, direct):
    from sqlalchemy import insert, select, text
    from sqlalchemy.ext.asyncio import create_async_engine

    name = unique_name("e2e_sa_apg")
    metadata, table = _sa_table(name)
    expected = [(i, f"name {i}") for i in range(1, 21)]
    engine = create_async_engine(_sa_url(eventual_proxy, "asyncpg"), pool_size=2)
    try:
        async with engine.begin() as c:
            await c.run_sync(metadata.create_all)
        async with engine.begin() as c:
            await c.execute(insert(table), [{"id": i, "name": n} for i, n in expected])
            assert direct.where(*(await c.execute(text(WHERE_SQL))).one()) == "primary"
        async with engine.connect() as c:
            assert [tuple(r) for r in await c.execute(select(table).order_by(table.c.id))] == expected
            assert direct.where(*(await c.execute(text(WHERE_SQL))).one()) == "primary"
        assert direct.primary_all(f"SELECT id, name FROM {name} ORDER BY id") == expected

        direct.wait_replica()
        async with engine.connect() as c:
            c = await c.execution_options(isolation_level="AUTOCOMMIT")
            assert direct.where(*(await c.execute(text(WHERE_SQL))).one()) == "replica"
            assert [tuple(r) for r in await c.execute(select(table).order_by(table.c.id))] == expected
        async with engine.connect() as c:
            c = await c.execution_options(postgresql_readonly=True)
            assert direct.where(*(await c.execute(text(WHERE_SQL))).one()) == "replica"
            assert [tuple(r) for r in await c.execute(select(table).order_by(table.c.id))] == expected
    finally:
        async with engine.begin() as c:
            await c.run_sync(metadata.drop_all)
        await engine.dispose()
