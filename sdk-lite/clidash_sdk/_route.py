"""The current route: a ContextVar holding an immutable scope, so that each asyncio
task and each thread sees its own, and tag() reads it without a lock."""
from __future__ import annotations

import functools
import inspect
import re
from contextvars import ContextVar
from typing import Any, Callable, Dict, Optional, TypeVar

from .sqlcommenter import CONSISTENCY_KEY, ROUTE_KEY, SCAN_BYTES, SERVICE_KEY, append_comment, encode, extract

__all__ = ["route", "current_tags", "tag", "configure", "configured_service", "MAX_TAG_LENGTH"]

# The proxy ignores a route or service tag longer than this (proxy/pg/requests.py).
MAX_TAG_LENGTH = 128

_F = TypeVar("_F", bound=Callable[..., Any])
_MODE = re.compile(r"(STRONG|READ_YOUR_WRITES|EVENTUAL)|BOUNDED:\s*(\d+(?:\.\d*)?|\.\d+)", re.IGNORECASE)
_OUR_KEYS = (ROUTE_KEY, SERVICE_KEY, CONSISTENCY_KEY)

_default_service: Optional[str] = None


def _check_label(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_TAG_LENGTH:
        raise ValueError(f"{what} is {len(value)} characters; the proxy ignores tags over {MAX_TAG_LENGTH}")
    return value


def _check_consistency(value: Any) -> str:
    """'strong' -> 'STRONG', 'bounded:250' -> 'BOUNDED:250'; ValueError on anything the
    proxy would ignore (it only ever honours a request for a STRONGER mode than the
    route's floor, and counts the rest)."""
    if not isinstance(value, str):
        raise TypeError(f"consistency must be a string, got {value!r}")
    text = value.strip().replace("-", "_")
    match = _MODE.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown consistency {value!r}: expected STRONG, READ_YOUR_WRITES, "
                         f"EVENTUAL or BOUNDED:<ms>")
    if match.group(1):
        return match.group(1).upper()
    return "BOUNDED:" + match.group(2)


def configure(*, service: Optional[str] = None) -> None:
    """Set the default service name (the `application` tag) for statements tagged in
    this process; a route's own `service=` wins over it. `service=None` clears it."""
    global _default_service
    _default_service = None if service is None else _check_label("service", service)


def configured_service() -> Optional[str]:
    return _default_service


class _Scope:
    """One entered route: its tags (merged over the enclosing scope's) and the encoded
    comment, computed on first use and cached for the default service it saw."""

    __slots__ = ("owner", "parent", "tags", "_for_service", "_comment", "_comment_pct")

    def __init__(self, owner: "route", parent: Optional["_Scope"], tags: Dict[str, str]):
        self.owner = owner
        self.parent = parent
        self.tags = tags
        self._for_service: Any = _UNSEEN
        self._comment = ""
        self._comment_pct = ""

    def effective(self, default_service: Optional[str]) -> Dict[str, str]:
        if default_service is not None and SERVICE_KEY not in self.tags:
            return {SERVICE_KEY: default_service, **self.tags}
        return dict(self.tags)

    def comment(self, default_service: Optional[str], escape_percent: bool) -> str:
        if self._for_service is not default_service:
            comment = encode(self.effective(default_service))
            # Races between threads only ever store the same strings.
            self._comment, self._comment_pct = comment, comment.replace("%", "%%")
            self._for_service = default_service
        return self._comment_pct if escape_percent else self._comment


_UNSEEN = object()
_CURRENT: ContextVar[Optional[_Scope]] = ContextVar("clidash_sdk_route", default=None)
_bare_scopes: Dict[Optional[str], str] = {}   # default service -> its comment, when no route is set


class route:
    """`with route("product_page"): ...`, `async with route(...)`, or `@route("product_page")`
    on a function or coroutine function. Statements run inside carry the route tag, plus
    `application` (service=, else configure()'s default) and `clidash_consistency`.

    Nested routes inherit what they do not set. One route object may be entered by many
    threads and tasks at once, and re-entered (recursion): the state lives in the
    ContextVar, not on the object."""

    __slots__ = ("name", "service", "consistency", "_tags", "_root", "__weakref__")

    def __init__(self, name: str, *, service: Optional[str] = None, consistency: Optional[str] = None):
        self.name = _check_label("route", name)
        self.service = None if service is None else _check_label("service", service)
        self.consistency = None if consistency is None else _check_consistency(consistency)
        tags = {ROUTE_KEY: self.name}
        if self.service is not None:
            tags[SERVICE_KEY] = self.service
        if self.consistency is not None:
            tags[CONSISTENCY_KEY] = self.consistency
        self._tags = tags
        self._root = _Scope(self, None, tags)   # reused whenever no route encloses this one

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("service", self.service), ("consistency", self.consistency)) if v)
        return f"route({self.name!r}{extra})"

    # ---------------------------------------------------------------- context manager

    def __enter__(self) -> "route":
        parent = _CURRENT.get()
        _CURRENT.set(self._root if parent is None else _Scope(self, parent, {**parent.tags, **self._tags}))
        return self

    def __exit__(self, *exc: Any) -> None:
        scope = _CURRENT.get()
        # Normally the innermost scope is ours; if an inner one was left open (a
        # generator abandoned mid-way), unwind to ours rather than fail.
        while scope is not None and scope.owner is not self:
            scope = scope.parent
        if scope is not None:
            _CURRENT.set(scope.parent)

    async def __aenter__(self) -> "route":
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)

    # ---------------------------------------------------------------- decorator

    def __call__(self, fn: _F) -> _F:
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"@route cannot decorate the generator {fn.__qualname__}: the route would leak "
                            f"into its consumer between yields; use `with route(...)` inside it instead")
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await fn(*args, **kwargs)
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]


def current_tags() -> Dict[str, str]:
    """The tags tag() would add now (a new dict; empty when there are none)."""
    scope = _CURRENT.get()
    if scope is None:
        return {} if _default_service is None else {SERVICE_KEY: _default_service}
    return scope.effective(_default_service)


def current_comment(escape_percent: bool = False) -> str:
    """The encoded comment tag() would add now ("" when none)."""
    scope = _CURRENT.get()
    if scope is not None:
        return scope.comment(_default_service, escape_percent)
    if _default_service is None:
        return ""
    comment = _bare_scopes.get(_default_service)
    if comment is None:
        comment = _bare_scopes[_default_service] = encode({SERVICE_KEY: _default_service})
    return comment.replace("%", "%%") if escape_percent else comment


def has_tags(sql: str) -> bool:
    """Whether sql already carries a CLIDash tag (route, application or consistency),
    in the last comment or a leading one (where the proxy looks)."""
    tail = sql[-SCAN_BYTES:]
    if "*/" not in tail:                     # the common case; extract() returns {} here too
        return False
    head = sql[:SCAN_BYTES]
    if not any(key in tail or key in head for key in _OUR_KEYS):
        return False                         # e.g. only an OpenTelemetry traceparent
    found = extract(sql)
    return any(key in found for key in _OUR_KEYS)


def tag(sql: str, *, escape_percent: bool = False) -> str:
    """sql with the current tags appended as a sqlcommenter comment; sql itself when
    there are none or when it already carries a CLIDash tag (never tags twice).

    escape_percent=True doubles the `%` of URL-encoded values, for drivers that will
    run %-interpolation over the text (format/pyformat paramstyles with parameters)."""
    comment = current_comment(escape_percent)
    if not comment:
        return sql
    if sql.endswith(comment) or has_tags(sql):   # endswith: tagged already by this very scope
        return sql
    return append_comment(sql, comment)
