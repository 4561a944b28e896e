"""The proxy's metrics and health HTTP listener (DESIGN section 8: port 9464).

    GET /metrics   Prometheus text exposition (see metrics.py)
    GET /livez     200 while the event loop runs
    GET /readyz    200 while the proxy listens and its primary answered recently, else 503 + reason
    GET /startup   200 once startup finished, else 503

A deliberately small HTTP/1.1 server on asyncio streams, no dependency: GET
and HEAD, keep-alive, no request bodies. It shares the event loop with the
proxy, so a bad HTTP client must not be able to hurt it: request lines and
headers are size- and count-limited, every read and write has a timeout,
connections are capped, malformed requests get 400 and a close, and a failing
endpoint gets 500 without taking the listener down.
"""
from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import render, take_snapshot

log = logging.getLogger("clidash.proxy.http")

MAX_LINE_BYTES = 8192          # request line or one header line
MAX_HEADERS = 64
MAX_CONNECTIONS = 32           # past this, new connections are closed at once
READ_TIMEOUT_S = 10.0          # to receive a whole request head; also the keep-alive idle limit
WRITE_TIMEOUT_S = 10.0
MAX_REQUESTS_PER_CONNECTION = 10_000

TEXT = "text/plain; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")

Response = tuple[int, str, bytes]                       # status, content type, body
Handler = Callable[[], Awaitable[Response]]


class ListenError(OSError):
    """A listener could not bind; the message names the address."""

    def __init__(self, what: str, host: str, port: int, cause: OSError):
        super().__init__(cause.errno, cause.strerror)
        self.message = f"cannot listen for {what} on {host}:{port}: {cause.strerror or cause}"

    def __str__(self) -> str:
        return self.message


class _Reject(Exception):
    """A request the server answers with an error status, then closes."""

    def __init__(self, status: int, text: str):
        self.status = status
        self.text = text


class _Request:
    __slots__ = ("method", "path", "keep_alive")

    def __init__(self, method: str, path: str, keep_alive: bool):
        self.method = method
        self.path = path
        self.keep_alive = keep_alive


class HttpServer:
    """GET/HEAD on a fixed set of paths, each answered by an async handler."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], what: str = "HTTP"):
        self.host = host
        self.port = port
        self.routes = routes
        self.what = what
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=MAX_LINE_BYTES, reuse_address=True, backlog=64)
        except OSError as exc:
            raise ListenError(self.what, self.host, self.port, exc) from None

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port) (the port the OS chose for port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- one connection ------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
                except _Reject as exc:
                    await _respond(writer, exc.status, TEXT, exc.text.encode() + b"\n", keep_alive=False)
                    return
                if request is None:
                    return  # closed between requests, or idle too long
                status, ctype, body, extra = await self._dispatch(request)
                await _respond(writer, status, ctype, body, request.keep_alive, request.method == "HEAD", extra)
                if not request.keep_alive:
                    return
        except (asyncio.CancelledError, ConnectionError, TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - never let one HTTP client reach the proxy
            log.exception("metrics/health connection failed")
        finally:
            self._connections.discard(task)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()   # a client that does not read: drop what it did not take
            else:
                writer.close()

    async def _dispatch(self, request: _Request) -> tuple[int, str, bytes, tuple[str, ...]]:
        handler = self.routes.get(request.path)
        if handler is None:
            return 404, TEXT, b"not found\n", ()
        if request.method not in ("GET", "HEAD"):
            request.keep_alive = False
            return 405, TEXT, b"method not allowed\n", ("Allow: GET, HEAD",)
        try:
            status, ctype, body = await handler()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("%s %s failed", request.method, request.path)
            return 500, TEXT, b"internal error\n", ()
        return status, ctype, body, ()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """One request head; None on a clean EOF before it. Raises _Reject."""
    line = await _read_line(reader, first=True)
    if line is None:
        return None
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1].startswith(b"/"):
        raise _Reject(400, "bad request line")
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None:
        raise _Reject(400, "bad request line")
    if match.group(1) != b"1":
        raise _Reject(505, "only HTTP/1.x is supported")
    if any(b <= 0x20 or b >= 0x7F for b in target):
        raise _Reject(400, "bad request target")
    http11 = match.group(2) != b"0"
    connection = b""
    has_body = False
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader)
        if not line:
            break
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise _Reject(400, "bad header line")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"connection":
            connection += b"," + value.lower()
        elif name == b"transfer-encoding":
            has_body = True
        elif name == b"content-length":
            if not value.isdigit():
                raise _Reject(400, "bad Content-Length")
            has_body = has_body or int(value) > 0
    else:
        raise _Reject(431, "too many header lines")
    if has_body:
        raise _Reject(400, "request bodies are not accepted")
    tokens = {t.strip() for t in connection.split(b",")}
    keep_alive = b"close" not in tokens if http11 else b"keep-alive" in tokens
    path = target.split(b"?", 1)[0].decode("ascii")
    return _Request(method.decode("ascii"), path, keep_alive)


async def _read_line(reader: asyncio.StreamReader, first: bool = False) -> bytes | None:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as exc:
        if first and not exc.partial:
            return None
        raise _Reject(400, "incomplete request") from None
    except (asyncio.LimitOverrunError, ValueError):
        raise _Reject(431 if not first else 400, "line too long") from None
    return line[:-2]


async def _respond(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, keep_alive: bool,
                   head_only: bool = False, extra: tuple[str, ...] = ()) -> None:
    head = [f"HTTP/1.1 {status} {REASONS[status]}", f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Cache-Control: no-store",
            f"Connection: {'keep-alive' if keep_alive else 'close'}", *extra]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


# -- the proxy's endpoints -------------------------------------------------------------


class ProxyEndpoints:
    """/metrics, /livez, /readyz and /startup of one proxy.

    `proxy` needs what metrics.take_snapshot reads, plus `started` (bool);
    `ready` answers (ready?, reason).
    """

    def __init__(self, proxy, ready: Callable[[], Awaitable[tuple[bool, str]]]):
        self.proxy = proxy
        self.ready = ready
        self._executor: ThreadPoolExecutor | None = None
        self._rendering: asyncio.Future | None = None

    def routes(self) -> dict[str, Handler]:
        return {"/metrics": self.metrics, "/livez": self.livez, "/readyz": self.readyz, "/startup": self.startup}

    async def metrics(self) -> Response:
        # Copy the numbers here, on the loop; format them in a worker thread
        # (the slow part). Concurrent scrapes share one rendering.
        if self._rendering is None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="clidash-metrics")
            snapshot = take_snapshot(self.proxy)
            rendering = asyncio.get_running_loop().run_in_executor(self._executor, render, snapshot)
            self._rendering = rendering
            rendering.add_done_callback(self._rendered)
        return 200, CONTENT_TYPE_LATEST, await asyncio.shield(self._rendering)

    def _rendered(self, future: asyncio.Future) -> None:
        if self._rendering is future:
            self._rendering = None

    async def livez(self) -> Response:
        return 200, TEXT, b"ok\n"

    async def readyz(self) -> Response:
        ok, reason = await self.ready()
        return (200, TEXT, b"ok\n") if ok else (503, TEXT, reason.encode() + b"\n")

    async def startup(self) -> Response:
        return (200, TEXT, b"ok\n") if self.proxy.started else (503, TEXT, b"starting\n")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class ProxyHttp:
    """The listener and its endpoints, started and closed together."""

    def __init__(self, proxy, host: str, port: int, ready: Callable[[], Awaitable[tuple[bool, str]]]):
        self.endpoints = ProxyEndpoints(proxy, ready)
        self.server = HttpServer(host, port, self.endpoints.routes(), what="metrics and health")

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()
        self.endpoints.close()
