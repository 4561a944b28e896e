"""clidash_sdk hooks against real servers: each statement, run inside a route, reads its
own text back from the server's view of the session (pg_stat_activity.query /
information_schema.processlist.info), and the codec must find the route there.

PostgreSQL: the session `pg_cluster` primary, directly (no proxy). MariaDB: a
throwaway server from the locally installed binaries (or CLIDASH_TEST_MYSQL_PRIMARY,
mysql://user:pw@host:port/db); those tests skip when neither is there. The unit
tests (tests/unit/test_sdk_fake_drivers.py) cover PyMySQL/aiomysql against a fake
connection either way.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
from procutil import stop_process

from clidash_sdk import configure, hooks, route
from clidash_sdk.sqlcommenter import extract

pytestmark = pytest.mark.integration

# Inside one transaction the server caches what pg_stat_activity shows, so every
# statement that reads itself back runs in a transaction of its own (autocommit).
PG_SELF = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# With a parameter, so that the drivers that %-interpolate do, over the comment too.
PG_SELF_PARAM_PYFORMAT = "SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND %s = 'x'"
SERVICE = "sdk-tests"
# Every character class the codec escapes: the URL-encoded comment is full of %xx.
ODD_ROUTE = "GET /items/{id} it's 100%"


@pytest.fixture(autouse=True)
def _service():
    configure(service=SERVICE)
    yield
    configure(service=None)


def assert_tagged(text: str, route_name: str) -> None:
    __tracebackhide__ = True
    assert extract(text) == {"application": SERVICE, "route": route_name}, text


def assert_service_only(text: str) -> None:
    """Outside any route: only configure()'s service is added."""
    __tracebackhide__ = True
    assert extract(text) == {"application": SERVICE}, text


def _with_driver(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


# --------------------------------------------------------------------------- SQLAlchemy


@pytest.mark.parametrize("route_name", ["hook_test_sqlalchemy", ODD_ROUTE])
def test_sqlalchemy_sync_engine(pg_cluster, route_name):
    sa = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    engine = hooks.sqlalchemy(sa.create_engine(_with_driver(pg_cluster.primary.dsn, "psycopg"),
                                                 isolation_level="AUTOCOMMIT"))
    try:
        with engine.connect() as conn, route(route_name):
            # Bound parameter: psycopg %-interpolates this text, comment included.
            text = conn.execute(sa.text(PG_SELF + " AND :x = 'x'"), {"x": "x"}).scalar_one()
            assert_tagged(text, route_name)
            plain = conn.exec_driver_sql(PG_SELF).scalar_one()
            assert_tagged(plain, route_name)
            no_params = conn.execution_options(no_parameters=True).exec_driver_sql(PG_SELF).scalar_one()
            assert_tagged(no_params, route_name)
        with engine.connect() as conn:
            assert_service_only(conn.exec_driver_sql(PG_SELF).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_sqlalchemy_async_engine(pg_cluster, driver):
    pytest.importorskip("sqlalchemy.ext.asyncio")
    pytest.importorskip(driver.split("_")[0])
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(_with_driver(pg_cluster.primary.dsn, driver), isolation_level="AUTOCOMMIT")
    assert hooks.sqlalchemy(engine) is engine                  # AsyncEngine: hooks its sync_engine
    route_name = f"hook_test_sqlalchemy_{driver}"
    try:
        async with engine.connect() as conn:
            async with route(route_name):
                text = (await conn.execute(sa.text(PG_SELF + " AND :x = 'x'"), {"x": "x"})).scalar_one()
            assert_tagged(text, route_name)

            @route(ODD_ROUTE)
            async def handler():
                return (await conn.execute(sa.text(PG_SELF + " AND :x = 'x'"), {"x": "x"})).scalar_one()
            assert_tagged(await handler(), ODD_ROUTE)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- psycopg 3


def test_psycopg_connection(pg_cluster):
    psycopg = pytest.importorskip("psycopg")
    with hooks.psycopg(psycopg.connect(pg_cluster.primary.dsn, autocommit=True)) as conn:
        with route("hook_test_psycopg"):
            assert_tagged(conn.execute(PG_SELF).fetchone()[0], "hook_test_psycopg")
            with conn.cursor() as cur:
                cur.execute(PG_SELF_PARAM_PYFORMAT, ("x",))
                assert_tagged(cur.fetchone()[0], "hook_test_psycopg")
                assert_tagged(list(cur.stream(PG_SELF))[0][0], "hook_test_psycopg")
        with route(ODD_ROUTE):
            assert_tagged(conn.execute(PG_SELF_PARAM_PYFORMAT, ("x",)).fetchone()[0], ODD_ROUTE)
            assert_tagged(conn.execute(PG_SELF).fetchone()[0], ODD_ROUTE)   # no params: no escaping
            with conn.transaction(), conn.cursor(name="named") as named:    # server-side cursor
                named.execute("SELECT 1 WHERE %s = 'x'", ("x",))
                # The server ran DECLARE "named" CURSOR FOR <query> /*tags*/: the tag rides along.
                declared = conn.execute("SELECT statement FROM pg_cursors WHERE name = 'named'").fetchone()[0]
                assert declared.startswith("DECLARE")
                assert_tagged(declared, ODD_ROUTE)
        assert_service_only(conn.execute(PG_SELF).fetchone()[0])


def test_psycopg_cursor_factory_and_raw_cursor(pg_cluster):
    psycopg = pytest.importorskip("psycopg")
    raw_cursor = getattr(psycopg, "RawCursor", None)
    with psycopg.connect(pg_cluster.primary.dsn, autocommit=True,
                         cursor_factory=hooks.psycopg(psycopg.ClientCursor)) as conn:
        with route(ODD_ROUTE), conn.cursor() as cur:
            cur.execute(PG_SELF_PARAM_PYFORMAT, ("x",))
            assert_tagged(cur.fetchone()[0], ODD_ROUTE)
        if raw_cursor is not None:                                   # psycopg >= 3.2: $1, no % processing
            conn.cursor_factory = hooks.psycopg(raw_cursor)
            with route(ODD_ROUTE), conn.cursor() as cur:
                cur.execute(PG_SELF + " AND $1 = 'x'", ("x",))
                assert_tagged(cur.fetchone()[0], ODD_ROUTE)


async def test_psycopg_async_connection(pg_cluster):
    psycopg = pytest.importorskip("psycopg")
    conn = hooks.psycopg(await psycopg.AsyncConnection.connect(pg_cluster.primary.dsn, autocommit=True))
    try:
        async with route("hook_test_psycopg_async"):
            cur = await conn.execute(PG_SELF_PARAM_PYFORMAT, ("x",))
            assert_tagged((await cur.fetchone())[0], "hook_test_psycopg_async")
    finally:
        await conn.close()


# --------------------------------------------------------------------------- asyncpg


async def test_asyncpg_connection(pg_cluster):
    asyncpg = pytest.importorskip("asyncpg")
    conn = await asyncpg.connect(pg_cluster.primary.dsn)
    try:
        assert hooks.asyncpg(conn) is conn and isinstance(conn, asyncpg.Connection)
        async with route("hook_test_asyncpg"):
            assert_tagged(await conn.fetchval(PG_SELF), "hook_test_asyncpg")
            assert_tagged((await conn.fetchrow(PG_SELF + " AND $1 = 'x'", "x"))[0], "hook_test_asyncpg")
            assert_tagged((await conn.fetch(PG_SELF))[0][0], "hook_test_asyncpg")
            stmt = await conn.prepare(PG_SELF)
            assert_tagged(await stmt.fetchval(), "hook_test_asyncpg")
            async with conn.transaction():
                async for record in conn.cursor(PG_SELF):
                    assert_tagged(record[0], "hook_test_asyncpg")
        with route(ODD_ROUTE):
            assert_tagged(await conn.fetchval(PG_SELF), ODD_ROUTE)
        assert_service_only(await conn.fetchval(PG_SELF))
    finally:
        await conn.close()


async def test_asyncpg_pool_connection_class(pg_cluster):
    asyncpg = pytest.importorskip("asyncpg")
    pool = await asyncpg.create_pool(pg_cluster.primary.dsn, min_size=1, max_size=2,
                                     connection_class=hooks.asyncpg(asyncpg.Connection))
    try:
        async with route("hook_test_asyncpg_pool"):
            assert_tagged(await pool.fetchval(PG_SELF), "hook_test_asyncpg_pool")
            async with pool.acquire() as conn:
                assert hooks.asyncpg(conn) is conn                  # a pool proxy: already tagged, no-op
                assert_tagged(await conn.fetchval(PG_SELF), "hook_test_asyncpg_pool")
    finally:
        await pool.close()


# --------------------------------------------------------------------------- Django (PostgreSQL)

_DJANGO_SCRIPT = r"""
import json, os, sys
import django
from django.conf import settings
settings.configure(DATABASES={"default": json.loads(os.environ["SDK_TEST_DJANGO_DB"])})
django.setup()
from django.db import connection
from clidash_sdk import configure, hooks, route
configure(service=sys.argv[1])
out = []
with connection.execute_wrapper(hooks.django()), connection.cursor() as cur:
    for name in sys.argv[2:]:
        with route(name):
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND %s = 'x'", ["x"])
            out.append(cur.fetchone()[0])
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            out.append(cur.fetchone()[0])
print(json.dumps(out))
"""


def test_django_execute_wrapper(pg_cluster):
    pytest.importorskip("django")
    pytest.importorskip("psycopg")
    p = pg_cluster.primary
    db = {"ENGINE": "django.db.backends.postgresql", "NAME": p.dbname, "USER": p.user,
          "PASSWORD": p.password, "HOST": p.host, "PORT": str(p.port)}
    # Its own process: Django's settings are process-global.
    result = subprocess.run([sys.executable, "-c", _DJANGO_SCRIPT, SERVICE, "hook_test_django", ODD_ROUTE],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SDK_TEST_DJANGO_DB": json.dumps(db)})
    assert result.returncode == 0, result.stderr[-3000:]
    texts = json.loads(result.stdout)
    for text, name in zip(texts, ["hook_test_django"] * 2 + [ODD_ROUTE] * 2):
        assert_tagged(text, name)


# --------------------------------------------------------------------------- MariaDB (PyMySQL, aiomysql)


class MySQLServer(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str


def _mysql_from_env() -> MySQLServer | None:
    dsn = os.environ.get("CLIDASH_TEST_MYSQL_PRIMARY", "").strip()
    if not dsn:
        return None
    url = urllib.parse.urlsplit(dsn)
    return MySQLServer(url.hostname or "127.0.0.1", url.port or 3306, urllib.parse.unquote(url.username or "root"),
                       urllib.parse.unquote(url.password or ""), url.path.lstrip("/") or "test")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mysql_server() -> Iterator[MySQLServer]:
    """CLIDASH_TEST_MYSQL_PRIMARY, else a throwaway mariadbd on a free port (skip if not installed)."""
    pymysql = pytest.importorskip("pymysql")
    server = _mysql_from_env()
    if server is not None:
        yield server
        return
    daemon = shutil.which("mariadbd") or shutil.which("mysqld") or (
        "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None)
    install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if daemon is None or install_db is None:
        pytest.skip("no MariaDB: set CLIDASH_TEST_MYSQL_PRIMARY or install mariadb-server")
    base = Path(tempfile.mkdtemp(prefix="clidash-sdk-mariadb-"))
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    init = subprocess.run([install_db, "--no-defaults", f"--datadir={base / 'data'}", *as_root,
                           "--auth-root-authentication-method=normal", "--skip-test-db"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"mariadb-install-db failed: {init.stderr[-500:]}")
    port = _free_port()
    log = open(base / "server.log", "wb")
    process = subprocess.Popen(
        [daemon, "--no-defaults", f"--datadir={base / 'data'}", *as_root, f"--port={port}",
         "--bind-address=127.0.0.1", f"--socket={base / 'mysqld.sock'}", f"--pid-file={base / 'mysqld.pid'}",
         "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--skip-name-resolve"],
        stdout=log, stderr=subprocess.STDOUT)
    server = MySQLServer("127.0.0.1", port, "root", "", "mysql")
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"mariadbd exited: {(base / 'server.log').read_text(errors='replace')[-2000:]}")
            try:
                pymysql.connect(host=server.host, port=server.port, user=server.user,
                                password=server.password, database=server.database, connect_timeout=1).close()
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    pytest.fail("mariadbd did not accept connections within 60 s")
                time.sleep(0.2)
        yield server
    finally:
        stop_process(process, timeout=30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


MYSQL_SELF = "SELECT info FROM information_schema.processlist WHERE id = connection_id() AND %s = 'x'"


def test_pymysql_connection(mysql_server):
    import pymysql
    import pymysql.cursors

    conn = hooks.pymysql(pymysql.connect(host=mysql_server.host, port=mysql_server.port, user=mysql_server.user,
                                         password=mysql_server.password, database=mysql_server.database))
    try:
        for name in ("hook_test_pymysql", ODD_ROUTE):
            with route(name):
                for cursor_class in (pymysql.cursors.Cursor, pymysql.cursors.SSCursor):
                    with conn.cursor(cursor_class) as cur:
                        cur.execute(MYSQL_SELF, ("x",))
                        assert_tagged(cur.fetchone()[0], name)
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(MYSQL_SELF, ("x",))
            assert_service_only(cur.fetchone()["info"])
    finally:
        conn.close()


async def test_aiomysql_connection(mysql_server):
    aiomysql = pytest.importorskip("aiomysql")
    conn = hooks.aiomysql(await aiomysql.connect(host=mysql_server.host, port=mysql_server.port,
                                                 user=mysql_server.user, password=mysql_server.password,
                                                 db=mysql_server.database))
    try:
        for name in ("hook_test_aiomysql", ODD_ROUTE):
            async with route(name):
                async with conn.cursor() as cur:
                    await cur.execute(MYSQL_SELF, ("x",))
                    assert_tagged((await cur.fetchone())[0], name)
    finally:
        conn.close()
