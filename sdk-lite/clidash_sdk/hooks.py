"""One-line hooks that tag every statement a driver sends with the current route.

Each hook imports its driver only when called, so `clidash_sdk` imports with no
driver installed. Every hook is idempotent (hooking twice tags once), and a
statement that already carries a CLIDash tag is left alone.

    hooks.sqlalchemy(engine)        Engine, AsyncEngine, Connection, or the Engine class
                                    (all engines): a `before_cursor_execute` listener
    hooks.psycopg(conn)             psycopg 3 Connection/AsyncConnection: its cursor_factory
                                    and server_cursor_factory become tagging subclasses;
    hooks.psycopg(CursorClass)      or a tagging subclass of a cursor class, for
                                    `psycopg.connect(dsn, cursor_factory=...)`
    hooks.asyncpg(conn)             asyncpg Connection (or pool proxy): its class becomes a
                                    tagging subclass, in place (same object, same pool);
    hooks.asyncpg(asyncpg.Connection)  or that subclass, for `connection_class=`
    hooks.pymysql(conn)             PyMySQL / aiomysql Connection: its `query()`, through
    hooks.aiomysql(conn)            which every cursor class sends its final SQL, is wrapped
    hooks.django()                  an execute_wrapper: `with connection.execute_wrapper(hooks.django()):`

`%` in URL-encoded tag values is doubled where the driver is going to %-interpolate
the text (format/pyformat paramstyles with parameters), so that it reaches the
server, and the proxy, as a single `%`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict

from ._route import current_comment, tag

__all__ = ["sqlalchemy", "psycopg", "asyncpg", "pymysql", "aiomysql", "django", "tag_query"]

_MARK = "_clidash_tagged"


def tag_query(query: Any, escape_percent: bool = False) -> Any:
    """tag() for str and bytes (the comment is ASCII); any other object is returned as is."""
    if isinstance(query, str):
        return tag(query, escape_percent=escape_percent)
    if isinstance(query, (bytes, bytearray)):
        if not current_comment():
            return query
        # latin-1 maps every byte to one code point and back, whatever the encoding.
        return tag(bytes(query).decode("latin-1"), escape_percent=escape_percent).encode("latin-1")
    return query


# --------------------------------------------------------------------------- SQLAlchemy

_PERCENT_STYLES = ("format", "pyformat")


def _sa_before_cursor_execute(conn: Any, cursor: Any, statement: str, parameters: Any,
                              context: Any, executemany: bool) -> Any:
    if not current_comment():
        return statement, parameters
    # The DBAPI %-interpolates when the dialect's paramstyle says so, unless SQLAlchemy
    # calls cursor.execute(statement) without parameters (the no_parameters option).
    escape = conn.dialect.paramstyle in _PERCENT_STYLES and not (
        not executemany and not parameters and getattr(context, "no_parameters", False))
    return tag(statement, escape_percent=escape), parameters


def sqlalchemy(engine: Any) -> Any:
    """Tag every statement of an Engine, AsyncEngine (its sync_engine), Connection, or
    of every engine when given the `sqlalchemy.engine.Engine` class. Returns engine."""
    from sqlalchemy import event

    target = getattr(engine, "sync_engine", engine)
    if not event.contains(target, "before_cursor_execute", _sa_before_cursor_execute):
        event.listen(target, "before_cursor_execute", _sa_before_cursor_execute, retval=True)
    return engine


# --------------------------------------------------------------------------- psycopg 3

_psycopg_classes: Dict[type, type] = {}


def _psycopg_class(base: type) -> type:
    """A subclass of a psycopg cursor class whose execute/executemany/stream/copy tag."""
    if getattr(base, _MARK, False):
        return base
    cached = _psycopg_classes.get(base)
    if cached is not None:
        return cached
    from psycopg import sql as psql

    try:
        from psycopg.raw_cursor import RawCursorMixin   # psycopg >= 3.2: `$1` placeholders, no %
        raw = issubclass(base, RawCursorMixin)
    except ImportError:
        raw = False

    def q(cur: Any, query: Any, interpolates: bool) -> Any:
        if not current_comment():
            return query
        if isinstance(query, psql.Composable):
            query = query.as_string(cur)
        return tag_query(query, escape_percent=interpolates and not raw)

    if inspect.iscoroutinefunction(base.execute):
        class TaggedAsync(base):  # type: ignore[valid-type,misc]
            async def execute(self, query, params=None, *args, **kwargs):
                return await super().execute(q(self, query, params is not None), params, *args, **kwargs)

            async def executemany(self, query, params_seq, *args, **kwargs):
                return await super().executemany(q(self, query, True), params_seq, *args, **kwargs)

            def stream(self, query, params=None, *args, **kwargs):
                return super().stream(q(self, query, params is not None), params, *args, **kwargs)

            def copy(self, statement, params=None, *args, **kwargs):
                return super().copy(q(self, statement, params is not None), params, *args, **kwargs)
        cls: type = TaggedAsync
    else:
        class Tagged(base):  # type: ignore[valid-type,misc]
            def execute(self, query, params=None, *args, **kwargs):
                return super().execute(q(self, query, params is not None), params, *args, **kwargs)

            def executemany(self, query, params_seq, *args, **kwargs):
                return super().executemany(q(self, query, True), params_seq, *args, **kwargs)

            def stream(self, query, params=None, *args, **kwargs):
                return super().stream(q(self, query, params is not None), params, *args, **kwargs)

            def copy(self, statement, params=None, *args, **kwargs):
                return super().copy(q(self, statement, params is not None), params, *args, **kwargs)
        cls = Tagged
    cls.__name__ = cls.__qualname__ = "Tagged" + base.__name__
    cls.__module__ = __name__
    setattr(cls, _MARK, True)
    return _psycopg_classes.setdefault(base, cls)


def psycopg(conn_or_cursor_class: Any) -> Any:
    """psycopg 3. Given a Connection or AsyncConnection: replaces its cursor_factory and
    server_cursor_factory with tagging subclasses of the current ones (conn.execute()
    goes through cursor_factory too) and returns the connection; fits a pool's
    `configure=` callback. Given a cursor class: returns its tagging subclass."""
    if isinstance(conn_or_cursor_class, type):
        return _psycopg_class(conn_or_cursor_class)
    conn = conn_or_cursor_class
    conn.cursor_factory = _psycopg_class(conn.cursor_factory)
    server_factory = getattr(conn, "server_cursor_factory", None)
    if server_factory is not None:
        conn.server_cursor_factory = _psycopg_class(server_factory)
    return conn


# --------------------------------------------------------------------------- asyncpg

_asyncpg_classes: Dict[type, type] = {}


def _asyncpg_class(base: type) -> type:
    if getattr(base, _MARK, False):
        return base
    cached = _asyncpg_classes.get(base)
    if cached is not None:
        return cached

    class TaggedConnection(base):  # type: ignore[valid-type,misc]
        # Empty __slots__: the same layout as asyncpg's slotted Connection, which is
        # what lets asyncpg(conn) switch an open connection's class in place.
        __slots__ = ()

        async def execute(self, query, *args, **kwargs):
            return await super().execute(tag(query), *args, **kwargs)

        async def executemany(self, command, *args, **kwargs):
            return await super().executemany(tag(command), *args, **kwargs)

        async def fetch(self, query, *args, **kwargs):
            return await super().fetch(tag(query), *args, **kwargs)

        async def fetchrow(self, query, *args, **kwargs):
            return await super().fetchrow(tag(query), *args, **kwargs)

        async def fetchval(self, query, *args, **kwargs):
            return await super().fetchval(tag(query), *args, **kwargs)

        async def prepare(self, query, *args, **kwargs):
            return await super().prepare(tag(query), *args, **kwargs)

        def cursor(self, query, *args, **kwargs):
            return super().cursor(tag(query), *args, **kwargs)

        async def copy_from_query(self, query, *args, **kwargs):
            return await super().copy_from_query(tag(query), *args, **kwargs)

    if hasattr(base, "fetchmany"):   # asyncpg >= 0.30
        async def fetchmany(self, query, *args, **kwargs):
            return await super(TaggedConnection, self).fetchmany(tag(query), *args, **kwargs)
        TaggedConnection.fetchmany = fetchmany  # type: ignore[attr-defined]

    TaggedConnection.__name__ = TaggedConnection.__qualname__ = "Tagged" + base.__name__
    TaggedConnection.__module__ = __name__
    setattr(TaggedConnection, _MARK, True)
    return _asyncpg_classes.setdefault(base, TaggedConnection)


def asyncpg(conn_or_class: Any) -> Any:
    """asyncpg. Given a Connection (or a pool's connection proxy): switches its class to
    a tagging subclass in place and returns it (a pooled connection stays tagged when
    released and acquired again). Given a Connection class: returns the tagging
    subclass, for `asyncpg.connect(..., connection_class=...)` / `create_pool(...)`.
    execute, executemany, fetch, fetchrow, fetchval, fetchmany, prepare, cursor and
    copy_from_query tag their query. asyncpg caches prepared statements by text, so
    each route gets its own cached statement."""
    if isinstance(conn_or_class, type):
        return _asyncpg_class(conn_or_class)
    from asyncpg import Connection

    conn = getattr(conn_or_class, "_con", None) or conn_or_class   # PoolConnectionProxy
    if not isinstance(conn, Connection):
        raise TypeError(f"hooks.asyncpg() needs an asyncpg Connection or Connection class, got {conn_or_class!r}")
    cls = type(conn)
    if not getattr(cls, _MARK, False):
        conn.__class__ = _asyncpg_class(cls)
    return conn_or_class


# --------------------------------------------------------------------------- PyMySQL, aiomysql


def _wrap_mysql_query(conn: Any) -> Any:
    """Wrap conn.query(sql, unbuffered=False), the one method through which every PyMySQL
    and aiomysql cursor (plain, dict, SS, executemany's bulk path, callproc) sends its
    final SQL. The SQL is already interpolated there, so no % escaping is needed, and
    executemany's INSERT ... VALUES batching still sees the statement untouched."""
    if getattr(conn, _MARK, False):
        return conn
    original: Callable[..., Any] = conn.query

    if inspect.iscoroutinefunction(original):
        async def query(sql: Any, unbuffered: bool = False) -> Any:
            return await original(tag_query(sql), unbuffered)
    else:
        def query(sql: Any, unbuffered: bool = False) -> Any:   # type: ignore[misc]
            return original(tag_query(sql), unbuffered)
    conn.query = query
    setattr(conn, _MARK, True)
    return conn


def pymysql(conn: Any) -> Any:
    """PyMySQL: tag every statement of this Connection, whatever its cursor class. Returns conn."""
    return _wrap_mysql_query(conn)


def aiomysql(conn: Any) -> Any:
    """aiomysql: tag every statement of this Connection, whatever its cursor class. Returns conn."""
    return _wrap_mysql_query(conn)


# --------------------------------------------------------------------------- Django


def _django_wrapper(execute: Callable[..., Any], sql: Any, params: Any, many: bool, context: Any) -> Any:
    # Django's backends %-interpolate (or convert %s placeholders) only when params is not None.
    return execute(tag_query(sql, escape_percent=params is not None), params, many, context)


def django() -> Callable[..., Any]:
    """An execute_wrapper: `with connection.execute_wrapper(hooks.django()): ...`, or, for
    every query of every connection, append it to `connection.execute_wrappers` in a
    `connection_created` signal handler. Django itself is not imported."""
    return _django_wrapper
