"""The stale-read audit: the ground truth the optimizer's reward uses.

A small sample of reads served by a replica (default 0.5%) is run again on the
primary, byte for byte (the same Query, or the same Bind/Execute with the
statement prepared first), and the DataRow bytes of both answers are compared
by digest. A difference means the replica's answer was stale when the audit
ran. Only sessions with no session-level changes are sampled, since the audit
connection runs with the default settings; audits run one at a time off the
query path and are dropped (counted) when they fall behind.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import struct

from . import messages as m
from .backend import BackendConnection, BackendUnavailable

log = logging.getLogger("clidash.proxy.audit")

_unpack_int32 = struct.Struct("!i").unpack_from
_DATA_ROW = ord("D")
MAX_PENDING = 64
MAX_RESPONSE_BYTES = 1 << 20   # larger answers are not audited (digesting them costs too much)


def datarow_digest(chunks) -> bytes:
    """Digest of the DataRow messages in a response, in order."""
    digest = hashlib.blake2b(digest_size=16)
    for data in chunks:
        pos, n = 0, len(data)
        while pos + 5 <= n:
            end = pos + 1 + _unpack_int32(data, pos + 1)[0]
            if data[pos] == _DATA_ROW:
                digest.update(data[pos:end])
            pos = end
    return digest.digest()


class _Collector:
    """Owner of the audit connection: gathers the answer to the request (up to its
    ReadyForQuery) and waits for the ReadyForQuery of the cleanup after it."""

    def __init__(self):
        self.chunks: list = []
        self.failed = False
        self._ready_left = 0
        self._answered = False
        self.done: asyncio.Future | None = None

    def expect(self, ready_messages: int) -> asyncio.Future:
        self.chunks, self.failed, self._answered = [], False, False
        self._ready_left = ready_messages
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def backend_data(self, backend, data: bytes) -> None:
        for event in backend.parser.feed(data):
            kind = type(event)
            if kind is m.ReadyForQuery:
                self._answered = True
                self._ready_left -= 1
                if self._ready_left == 0 and self.done is not None and not self.done.done():
                    self.done.set_result(None)
            elif not self._answered:
                if kind is m.ErrorResponse:
                    self.failed = True
                self.chunks.append(event.raw)

    def backend_lost(self, backend, exc) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(BackendUnavailable(backend.address, "audit connection lost"))

    def pause_client_reading(self) -> None:
        pass

    def resume_client_reading(self) -> None:
        pass


class StaleAuditor:
    def __init__(self, proxy, rate: float = 0.005):
        self.proxy = proxy
        self.rate = rate
        self.dropped = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._connections: dict[tuple, BackendConnection] = {}

    def sample(self) -> bool:
        return self.rate > 0 and random.random() < self.rate

    def start(self) -> None:
        if self.rate > 0:
            self._queue = asyncio.Queue(MAX_PENDING)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clidash-stale-audit")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for conn in self._connections.values():
            conn.close()

    def submit(self, service: str, route: str, startup_params: dict, statements: bytes, request: bytes,
               replica_chunks: list) -> None:
        """Queue one audit; never blocks (a full queue drops it, counted)."""
        if self._queue is None:
            return
        answer = b"".join(replica_chunks)
        if len(answer) > MAX_RESPONSE_BYTES:
            return
        try:
            self._queue.put_nowait((service, route, startup_params, statements, request,
                                    datarow_digest([answer])))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await asyncio.wait_for(self._audit(*job), 5.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an audit must never hurt the proxy
                self.proxy.stats.record_error("stale_audit")
                log.warning("stale audit failed: %r", exc)

    async def _audit(self, service, route, startup_params, statements, request, replica_digest) -> None:
        conn, collector = await self._connection(startup_params)
        # Prepared statements (if any) go first in the same batch; they are closed
        # again after the request so their names stay free.
        closes = b""
        if statements:
            closes = b"".join(m.close_statement(name) for name in _parsed_names(statements)) + m.sync()
        done = collector.expect(2 if closes else 1)
        conn.write(statements + request + closes)
        await done
        if collector.failed:
            self.proxy.stats.record_error("stale_audit")
            return
        found = datarow_digest(collector.chunks) != replica_digest
        self.proxy.stats.count_route_extra(service, route, audited=1, stale=int(found))

    async def _connection(self, startup_params: dict):
        key = tuple(sorted(startup_params.items()))
        conn = self._connections.get(key)
        if conn is None or conn.closed:
            conn = BackendConnection(self.proxy.primary, -1)
            await conn.connect(startup_params)
            conn.owner = _Collector()
            self._connections[key] = conn
        return conn, conn.owner


def _parsed_names(statements: bytes) -> list[str]:
    names, pos = [], 0
    while pos + 5 <= len(statements):
        end = pos + 1 + _unpack_int32(statements, pos + 1)[0]
        if statements[pos] == ord("P"):
            names.append(statements[pos + 5:statements.index(b"\0", pos + 5)].decode("utf-8", "surrogateescape"))
        pos = end
    return names
