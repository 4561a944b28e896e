"""clidash_sdk.hooks without servers: PyMySQL and aiomysql real cursor classes over a
fake connection that records the SQL it is asked to send, the Django execute wrapper,
and the SQLAlchemy hook on SQLite. Real servers: tests/integration/test_sdk_hooks.py
(this file is named differently: test modules here may not share a basename)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from clidash_sdk import hooks, route
from clidash_sdk.sqlcommenter import extract


def _result():
    return SimpleNamespace(affected_rows=1, warning_count=0, description=None, insert_id=0, rows=(), fields=(),
                           has_next=False, _finish_unbuffered_query=lambda: None)


class FakeMySQLConnection:
    """What PyMySQL's and aiomysql's cursors need from a connection; query() records."""

    encoding = "utf8"
    charset = "utf8mb4"

    def __init__(self):
        self.sent = []
        self._result = None
        self.loop = None

    def escape(self, obj, mapping=None):
        from pymysql import converters
        return converters.escape_item(obj, self.charset, mapping=mapping)

    literal = escape

    def query(self, sql, unbuffered=False):
        self.sent.append(sql)
        self._result = _result()
        return 1


class FakeAsyncMySQLConnection(FakeMySQLConnection):
    async def query(self, sql, unbuffered=False):   # type: ignore[override]
        self.sent.append(sql)
        self._result = _result()
        return 1


def test_pymysql_every_cursor_class_is_tagged():
    cursors = pytest.importorskip("pymysql.cursors")
    conn = hooks.pymysql(FakeMySQLConnection())
    assert hooks.pymysql(conn) is conn                       # idempotent
    with route("hook_test_pymysql", service="shop"):
        for cls in (cursors.Cursor, cursors.DictCursor, cursors.SSCursor):
            cls(conn).execute("SELECT %s, '100%%'", ("it's 50%",))
    untagged = cursors.Cursor(conn)
    untagged.execute("SELECT 2")
    *tagged, last = conn.sent
    assert last == "SELECT 2"
    assert len(tagged) == 3
    for sql in tagged:
        # Interpolated first (so the comment's %xx never meets the % operator), then tagged.
        assert sql.startswith("SELECT 'it\\'s 50%', '100%' /*")
        assert extract(sql) == {"route": "hook_test_pymysql", "application": "shop"}


def test_pymysql_executemany_keeps_its_bulk_insert():
    cursors = pytest.importorskip("pymysql.cursors")
    conn = hooks.pymysql(FakeMySQLConnection())
    with route("bulk route"):                                # a space: %20 in the comment
        cursors.Cursor(conn).executemany("INSERT INTO t (a, b) VALUES (%s, %s)", [(1, "x"), (2, "y%")])
    # One statement (the bulk path, which hands over bytes), tagged at its end.
    assert conn.sent == [b"INSERT INTO t (a, b) VALUES (1, 'x'),(2, 'y%') /*route='bulk%20route'*/"]


async def test_aiomysql_every_cursor_class_is_tagged():
    cursors = pytest.importorskip("aiomysql.cursors")
    conn = hooks.aiomysql(FakeAsyncMySQLConnection())
    conn.loop = asyncio.get_running_loop()
    with route("hook_test_aiomysql"):
        for cls in (cursors.Cursor, cursors.DictCursor):
            await cls(conn).execute("SELECT %s", ("50%",))
        await cursors.Cursor(conn).executemany("INSERT INTO t VALUES (%s)", [(1,), (2,)])
    assert conn.sent == [
        "SELECT '50%' /*route='hook_test_aiomysql'*/",
        "SELECT '50%' /*route='hook_test_aiomysql'*/",
        b"INSERT INTO t VALUES (1),(2) /*route='hook_test_aiomysql'*/",
    ]


def test_mysql_hook_tags_bytes_too():
    conn = hooks.pymysql(FakeMySQLConnection())
    with route("r"):
        conn.query(b"SELECT '\xc3\xa9'")
    assert conn.sent == [b"SELECT '\xc3\xa9' /*route='r'*/"]


# --------------------------------------------------------------------------- Django


def test_django_wrapper_tags_and_escapes_percent_only_with_params():
    calls = []

    def execute(sql, params, many, context):
        calls.append((sql, params, many, context))
        return "result"

    wrapper = hooks.django()
    with route("GET /items"):
        assert wrapper(execute, "SELECT 1", None, False, {}) == "result"
        wrapper(execute, "SELECT %s", (1,), False, {})
        wrapper(execute, "INSERT INTO t VALUES (%s)", [(1,), (2,)], True, {})
    wrapper(execute, "SELECT 3", None, False, {})
    assert [c[0] for c in calls] == [
        "SELECT 1 /*route='GET%20%2Fitems'*/",
        "SELECT %s /*route='GET%%20%%2Fitems'*/",
        "INSERT INTO t VALUES (%s) /*route='GET%%20%%2Fitems'*/",
        "SELECT 3",
    ]
    assert calls[2][1:] == ([(1,), (2,)], True, {})


def test_django_execute_wrapper_on_sqlite():
    pytest.importorskip("django")
    from django.conf import settings
    if not settings.configured:
        settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
    import django
    django.setup()
    from django.db import connection

    seen = []

    def spy(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    # The first wrapper installed is the outermost: the spy sees what the backend gets.
    with connection.execute_wrapper(hooks.django()), connection.execute_wrapper(spy):
        with route("django route"), connection.cursor() as cur:
            cur.execute("SELECT %s || '%%'", ["50"])
            assert cur.fetchone() == ("50%",)
    assert seen == ["SELECT %s || '%%' /*route='django%%20route'*/"]


# --------------------------------------------------------------------------- SQLAlchemy (SQLite)


def test_sqlalchemy_hook_on_sqlite_is_idempotent():
    sa = pytest.importorskip("sqlalchemy")
    engine = sa.create_engine("sqlite://")
    assert hooks.sqlalchemy(hooks.sqlalchemy(engine)) is engine
    statements = []
    sa.event.listen(engine, "after_cursor_execute",
                    lambda conn, cur, statement, *rest: statements.append(statement))
    with engine.connect() as conn:
        with route("sqlite_route"):
            assert conn.execute(sa.text("SELECT :x || '%'"), {"x": "1"}).scalar() == "1%"
        conn.execute(sa.text("SELECT 2"))
    assert statements[0].endswith("/*route='sqlite_route'*/") and statements[0].count("/*") == 1
    assert statements[1] == "SELECT 2"
