"""One client connection: the IO shell around the sans-IO pieces.

It reads as a pipeline: read a request, classify it, route it, acquire the
backend, forward it (with any session preamble), relay and time the response,
release. Requests are dispatched one at a time, except that requests that must
run on the primary anyway are pipelined behind earlier primary requests.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from time import perf_counter

from clidash.policy import Mode

from clidash.proxy.routing import FALLBACK_REASONS, PRIMARY, SessionView, route

from . import messages as m
from . import requests
from .backend import BackendConnection, BackendUnavailable
from .classify import TxEffect
from .consistency import SessionConsistency
from .framing import FrontendParser, ProtocolViolation, ends_with_ready
from .session import SessionState
from .startup import Authenticated, CancelRequested, ClientStartup, Rejected

log = logging.getLogger("clidash.proxy.pg")

_MAX_QUEUED_REQUESTS = 256
# Requests whose effect we cannot see: treated as writes for read-your-writes.
_MAY_WRITE = frozenset({"unparseable", "unknown_statement", "function_call", "classifier_error"})
_STARTUP, _CONNECTING, _READY, _CLOSED = range(4)


class Inflight:
    """A request sent to a backend, until its ReadyForQuery."""

    __slots__ = ("request", "backend", "started", "swallow", "failed", "parses", "parse_ok",
                 "reason", "forwarded", "complete", "hide_ready", "audit", "audit_statements")

    def __init__(self, request, backend, swallow, reason):
        self.request = request
        self.backend = backend
        self.started = perf_counter()
        self.swallow = swallow          # preamble ReadyForQuery messages still to hide
        self.failed = False
        self.parses = []
        self.parse_ok = 0
        self.reason = reason
        self.forwarded = False          # some response bytes already reached the client
        self.complete = request.complete
        self.hide_ready = False         # we sent the Sync (see seal): the client expects no ReadyForQuery
        self.audit = None               # sampled for the stale-read audit: the answer's bytes
        self.audit_statements = b""


class ClientSession(asyncio.Protocol):
    def __init__(self, proxy):
        self.proxy = proxy                      # PgProxy: config, replicas, stats, classifier
        self.transport = None
        self.phase = _STARTUP
        self.frontend = FrontendParser(proxy.config.max_message_bytes)
        self.startup: ClientStartup | None = None
        self.state = None
        self.backends: dict[int, BackendConnection] = {}
        self.pending: deque = deque()
        self.inflight: deque = deque()
        self.batch: list = []
        self.batch_continues = False            # the batch follows a Flush-ended request
        self.connecting = False
        self.txn_target: int | None = None
        self.deferred_out: list = []            # async messages from a backend not serving now
        self.service = proxy.config.service
        self.startup_params: dict = {}
        self.early_messages: list = []          # sent before our first ReadyForQuery
        self.key = (0, b"")
        self._view = SessionView()
        self._reading_paused = False
        self.consistency = SessionConsistency(proxy.stats, proxy.config.ryw_wait_ms)
        self.retry_scheduled = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loopback = sock is None or sock.family == socket.AF_UNIX or (
            peer is not None and (peer[0].startswith("127.") or peer[0] == "::1"))
        self.startup = ClientStartup(self.proxy.auth, loopback)
        self.proxy.client_opened(self)

    def connection_lost(self, exc):
        self.phase = _CLOSED
        for backend in list(self.backends.values()):
            backend.close()
        self.backends.clear()
        for entry in self.inflight:
            if entry.backend.target != PRIMARY:
                self.proxy.replicas[entry.backend.target].inflight -= 1
        self.inflight.clear()
        self.proxy.client_closed(self)

    def pause_writing(self):
        for backend in self.backends.values():
            if backend.transport is not None:
                backend.transport.pause_reading()

    def resume_writing(self):
        for backend in self.backends.values():
            if backend.transport is not None and not backend.closed:
                backend.transport.resume_reading()

    def pause_client_reading(self):
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_client_reading(self):
        if self._reading_paused and self.transport is not None and len(self.pending) < _MAX_QUEUED_REQUESTS:
            self._reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes):
        if self.phase is _READY and not self.batch and not self.batch_continues and self.frontend.idle:
            # Fast paths for the two commonest reads: one whole simple Query, or
            # one Bind/Execute/Sync of a known statement. Anything else (or
            # anything malformed) takes the general path below.
            if data[0] == 0x51 and data[-1] == 0 and len(data) == 1 + int.from_bytes(data[1:5], "big"):
                sql = data[5:-1].decode("utf-8", "surrogateescape")
                req = requests.simple_query(data, sql, self.proxy.classifier)
            else:
                req = requests.prepared_execution(data, self.state.statements)
            if req is not None:
                self.pending.append(req)
                self.pump()
                return
        try:
            events = self.frontend.feed(data)
            if self.phase is _READY:
                for event in events:
                    self.client_message(event)
            else:
                self.startup_events(events)
        except ProtocolViolation as exc:
            self.proxy.stats.record_error("protocol")
            self.fatal(exc.sqlstate, str(exc))
            return
        except Exception:
            # Nothing a client sends may take the process down: drop this client only.
            log.exception("internal error while handling a client message")
            self.proxy.stats.record_error("internal")
            self.fatal("XX000", "internal error in the CLIDash proxy")
            return
        self.pump()

    # ------------------------------------------------------------- startup

    def startup_events(self, events):
        for event in events:
            if self.phase is not _STARTUP:
                # Messages sent before we said ReadyForQuery: keep them for later.
                if self.phase is _CONNECTING:
                    self.early_messages.append(event)
                continue
            reply, outcome = self.startup.receive(event)
            if reply:
                self.transport.write(reply)
            if outcome is None:
                continue
            if type(outcome) is Rejected:
                self.transport.write(outcome.error)
                self.close()
                return
            if type(outcome) is CancelRequested:
                self.proxy.forward_cancel(outcome.process_id, outcome.secret_key)
                self.close()
                return
            self.phase = _CONNECTING
            asyncio.get_running_loop().create_task(self.open_session(outcome))

    async def open_session(self, auth: Authenticated):
        params = dict(auth.params)
        primary = self.proxy.primary
        params["database"] = auth.database or primary.dbname or auth.user
        self.startup_params = params
        self.service = params.get("application_name") or self.proxy.config.service
        self.consistency.startup_options(params.get("options", ""))
        backend = BackendConnection(primary, PRIMARY)
        try:
            await backend.connect(params)
        except BackendUnavailable as exc:
            self.proxy.stats.record_error("backend_unavailable")
            log.warning("client %s: %s", self.transport.get_extra_info("peername"), exc)
            self.fatal(exc.sqlstate, str(exc))
            return
        if self.phase is _CLOSED:
            backend.close()
            return
        backend.owner = self
        self.backends[PRIMARY] = backend
        self.state = SessionState()
        self.key = self.proxy.register_cancel_key(self)
        greeting = [m.parameter_status(k, v) for k, v in backend.parameters.items()]
        greeting.append(m.backend_key_data(*self.key))
        greeting.append(m.ready_for_query("I"))
        self.transport.write(b"".join(greeting))
        self.phase = _READY
        early, self.early_messages = self.early_messages, []
        for event in early:
            self.client_message(event)
        self.pump()

    # ------------------------------------------------------ client messages

    def client_message(self, event):
        kind = type(event)
        if kind is m.Query:
            if self.batch:
                # A Query after unsynced extended messages: send them along with it.
                self.batch.append(event)
                self.finish_batch(complete=True)
            else:
                req = requests.simple_query(event.raw, event.sql, self.proxy.classifier)
                req.continues = self.batch_continues
                self.batch_continues = False
                self.pending.append(req)
        elif kind is m.Sync:
            self.batch.append(event)
            self.finish_batch(complete=True)
        elif kind is m.Parse or kind is m.Bind or kind is m.Execute or kind is m.Describe or kind is m.Close:
            self.batch.append(event)
        elif kind is m.Flush:
            if self.batch:
                self.batch.append(event)
                self.finish_batch(complete=False)
            elif self.inflight:
                self.inflight[-1].backend.write(event.raw)
        elif kind is m.CopyData or kind is m.CopyDone or kind is m.CopyFail:
            # COPY data follows its COPY statement to the same backend. Some
            # drivers (asyncpg) send it before the CopyInResponse arrives, so it
            # may trail a request that is still queued here.
            if self.batch:
                self.batch.append(event)
            elif self.pending:
                self.pending[-1].raw += event.raw
            elif self.inflight:
                self.inflight[-1].backend.write(event.raw)
            # Outside COPY the server ignores these too.
        elif kind is m.FunctionCall:
            req = requests.function_call(event)
            req.continues = self.batch_continues
            self.batch_continues = False
            self.pending.append(req)
        elif kind is m.Terminate:
            self.close()
            return
        else:
            raise ProtocolViolation(f"unexpected {kind.__name__} message")
        if len(self.pending) >= _MAX_QUEUED_REQUESTS:
            self.pause_client_reading()

    def finish_batch(self, complete: bool):
        req = requests.extended(self.batch, complete, self.batch_continues,
                                self.state.statements, self.proxy.classifier)
        self.batch = []
        self.batch_continues = not complete
        self.pending.append(req)

    # ------------------------------------------------------------ dispatch

    def pump(self):
        while self.pending and not self.connecting and self.phase is _READY:
            req = self.pending[0]
            if self.inflight and not self.can_pipeline(req):
                break
            if not self.dispatch(req):
                break
            self.pending.popleft()
        if self._reading_paused and len(self.pending) < _MAX_QUEUED_REQUESTS // 2:
            self.resume_client_reading()

    def can_pipeline(self, req) -> bool:
        last = self.inflight[-1]
        if not last.complete:
            # The previous request ended with Flush, not Sync. Carry on there
            # when this one belongs there; otherwise close it with a Sync of our
            # own (its ReadyForQuery is hidden) and wait for it to finish.
            if req.continues and self.continues_on(req, last):
                return True
            self.seal(last)
            req.continues = False
            return False
        return (last.backend.target == PRIMARY and not req.replica_ok and not req.continues
                and self.state.deferred_begin is None and not req.simple_begin)

    def continues_on(self, req, last) -> bool:
        if self.txn_target is not None or req.needs_open_portal:
            return True
        return self.choose_target(req)[0] == last.backend.target

    def seal(self, entry):
        entry.complete = True
        entry.hide_ready = True
        entry.backend.write(m.sync())

    def choose_target(self, req) -> tuple[int | None, str, bool]:
        """(target, reason, replica_ok); target None: wait a moment and retry."""
        replica_ok, reason = req.replica_ok, req.reason
        if self.state.deferred_begin is not None:
            replica_ok = req.tx is TxEffect.SET_READ_ONLY
            reason = "read_only_transaction" if replica_ok else "transaction"
        elif req.tx is TxEffect.BEGIN_READ_ONLY:
            replica_ok, reason = True, "read_only_transaction"
        service = req.service or self.service
        consistency = self.consistency
        policy = consistency.mode_for(req, service, self.proxy.policy_for(service, req.route))
        if replica_ok and policy.mode is Mode.READ_YOUR_WRITES and consistency.has_written:
            self.proxy.stats.count_route_extra(service, req.route, ryw_exposed=1)
        if consistency.token_pending and replica_ok and self.txn_target is None \
                and policy.mode is Mode.READ_YOUR_WRITES:
            token = consistency.resolve_token(self.proxy.lag)
            if token is None:
                return (None if self.wait_for_replica() else PRIMARY), "ryw", replica_ok
            self._view = SessionView(self.txn_target, self.state.pinned_to_primary, token)
        target, reason = route(replica_ok, reason, self._view, policy, self.proxy.replicas,
                               self.proxy.config.hard_lag_cap_ms)
        if reason == "ryw" and self.wait_for_replica():
            return None, reason, replica_ok
        return target, reason, replica_ok

    def wait_for_replica(self) -> bool:
        """Hold a read-your-writes read briefly (--ryw-wait-ms), retrying every 1 ms."""
        if not self.consistency.may_wait():
            return False
        if not self.retry_scheduled:
            self.retry_scheduled = True
            asyncio.get_running_loop().call_later(0.001, self.retry_pump)
        return True

    def retry_pump(self):
        self.retry_scheduled = False
        if self.phase is _READY:
            self.pump()

    def dispatch(self, req) -> bool:
        """Send req to its backend. False when it has to wait (backend connecting)."""
        state = self.state
        if req.continues:
            entry = self.inflight[-1]
            self.note_statements(req, entry)
            entry.complete = req.complete
            entry.request.executed += req.executed
            entry.backend.write(req.raw)
            return True
        if req.simple_begin and self.txn_target is None and state.deferred_begin is None and not self.inflight:
            # Hold a plain BEGIN until the next statement says whether the
            # transaction is read-only (SET TRANSACTION READ ONLY may follow).
            state.deferred_begin = req.raw
            self.transport.write(m.command_complete("BEGIN") + m.ready_for_query("T"))
            return True
        target, reason, replica_ok = self.choose_target(req)
        if target is None:
            return False   # waiting for a replica to reach this session's last write
        backend = self.backends.get(target)
        if backend is None:
            self.connect_backend(target)
            return False
        if target == PRIMARY and replica_ok and reason in FALLBACK_REASONS:
            self.proxy.stats.record_fallback(self.service, reason)
        preamble = state.preamble_for(backend.session, req.referenced)
        entry = Inflight(req, backend, preamble.responses if preamble else 0, reason)
        self.note_statements(req, entry)
        self.inflight.append(entry)
        if target != PRIMARY:
            self.proxy.replicas[target].inflight += 1
            if (self.txn_target is None and req.operation == "read" and req.complete
                    and self.proxy.auditor.sample()):
                self.sample_for_audit(req, entry)
        backend.write(preamble.data + req.raw if preamble else req.raw)
        return True

    def sample_for_audit(self, req, entry):
        """Keep this replica read's answer for the stale-read audit, when the
        primary can run it the same way (default session settings, known statements)."""
        if self.state.has_changes:
            return
        if req.defines_statements and not all(
                type(msg) is m.Parse and not msg.statement or type(msg) not in (m.Parse, m.Close)
                for msg in req.messages):
            return   # only the unnamed statement may be parsed in the request itself
        statements = self.state.parse_messages(req.referenced)
        if statements is not None:
            entry.audit = []
            entry.audit_statements = statements

    def note_statements(self, req, entry):
        """Track Parse/Close of named statements as they go to entry's backend."""
        if not req.defines_statements:
            return  # e.g. Bind/Execute/Sync of a known statement: nothing to record
        state = self.state
        session = entry.backend.session
        for msg in req.messages:
            kind = type(msg)
            if kind is m.Parse:
                cls = self.proxy.classifier.classify(msg.sql)
                entry.parses.append(state.parsed(msg, cls, session))
            elif kind is m.Close and msg.kind == "S":
                state.closed(msg.name, session, self.other_sessions(entry.backend))

    def other_sessions(self, backend):
        return [b.session for b in self.backends.values() if b is not backend]

    def connect_backend(self, target: int):
        self.connecting = True
        asyncio.get_running_loop().create_task(self._connect_backend(target))

    async def _connect_backend(self, target: int):
        backend = BackendConnection(self.proxy.replica_addresses[target], target)
        try:
            await backend.connect(self.startup_params)
        except BackendUnavailable as exc:
            log.warning("%s; its reads go to the primary", exc)
            self.proxy.mark_replica_down(target, str(exc))
        else:
            if self.phase is _CLOSED:
                backend.close()
            else:
                backend.owner = self
                self.backends[target] = backend
        finally:
            self.connecting = False
        if self.phase is _READY:
            self.pump()

    # ------------------------------------------------------ backend replies

    def backend_data(self, backend: BackendConnection, data: bytes):
        inflight = self.inflight
        if not inflight or inflight[0].backend is not backend:
            self.unsolicited(backend, data)
            return
        entry = inflight[0]
        if entry.swallow == 0 and not entry.hide_ready and backend.parser.idle:
            status = ends_with_ready(data)
            if status is not None:
                # The whole response in one read, nothing in it the session must
                # track: forward it as is.
                self.transport.write(data)
                if entry.audit is not None:
                    entry.audit.append(data)
                self.complete(entry, status)
                inflight.popleft()
                if inflight or self.pending or self.deferred_out:
                    self.after_response()
                return
        try:
            events = backend.parser.feed(data)
        except ProtocolViolation as exc:
            self.backend_failed(backend, f"protocol error from {backend.address.describe()}: {exc}")
            return
        entry = inflight[0]
        whole = backend.parser.whole and entry.swallow == 0
        out = []
        for event in events:
            kind = type(event)
            if entry is None:
                out.append(event.raw)       # async messages after the last response
                continue
            if entry.swallow:
                whole = False
                if kind is m.ReadyForQuery:
                    entry.swallow -= 1
                elif kind is m.ErrorResponse:
                    self.proxy.stats.record_error("session_replay")
                    log.warning("replaying session state on %s failed: %s",
                                backend.address.describe(), event.message)
                continue
            if kind is m.ReadyForQuery:
                if entry.hide_ready:
                    whole = False
                else:
                    out.append(event.raw)
                self.complete(entry, event.status)
                inflight.popleft()
                entry = inflight[0] if inflight and inflight[0].backend is backend else None
                continue
            out.append(event.raw)
            entry.forwarded = True
            if entry.audit is not None:
                entry.audit.append(event.raw)
            if kind is m.ErrorResponse:
                entry.failed = True
            elif kind is m.ParseComplete:
                entry.parse_ok += 1
        if out or whole:
            self.transport.write(data if whole else b"".join(out))
        self.after_response()

    def after_response(self):
        if not self.inflight and self.deferred_out:
            self.transport.write(b"".join(self.deferred_out))
            self.deferred_out.clear()
        self.pump()

    def complete(self, entry: Inflight, status: str):
        req = entry.request
        backend = entry.backend
        target = backend.target
        proxy = self.proxy
        proxy.stats.record(req.service or self.service, req.route, req.operation,
                           "primary" if target == PRIMARY else "replica",
                           entry.reason, perf_counter() - entry.started, entry.failed)
        if target != PRIMARY:
            proxy.replicas[target].inflight -= 1
            if entry.audit is not None and not entry.failed:
                proxy.auditor.submit(req.service or self.service, req.route, self.startup_params,
                                     entry.audit_statements, req.raw, entry.audit)
        state = self.state
        if entry.failed and entry.parses:
            for ps in entry.parses[entry.parse_ok:]:
                state.parse_failed(ps, backend.session)
        was_in_transaction = self.txn_target is not None
        if not entry.failed and req.executed and req.operation != "read":
            self.apply_session_effects(req, backend, status != "I")
        wrote = target == PRIMARY and (req.operation == "write" or req.reason in _MAY_WRITE)
        self.consistency.request_done(wrote, status == "I")
        if status == "I":
            if was_in_transaction:
                committed = not entry.failed and req.tx is not TxEffect.ROLLBACK
                state.transaction_ended(committed, backend.session)
            new_target = None
        else:
            new_target = target
        if new_target != self.txn_target or state.pinned_to_primary != self._view.pinned_to_primary:
            self.txn_target = new_target
            self._view = SessionView(new_target, state.pinned_to_primary, self.consistency.token)

    def apply_session_effects(self, req, backend, in_transaction: bool):
        state = self.state
        for cls in req.executed:
            if cls is None:
                continue
            if cls.session_replay:
                state.state_changed(cls.session_replay, False, backend.session, in_transaction)
                self.consistency.session_sql(cls.session_replay)
            if cls.discard_all:
                state.state_changed("DISCARD ALL", True, backend.session, in_transaction)
                state.discarded_all()
                self.consistency.discard_all()
            if cls.deallocate == "*":
                state.state_changed("DEALLOCATE ALL", True, backend.session, in_transaction)
            elif cls.deallocate:
                state.closed(cls.deallocate, backend.session, self.other_sessions(backend))
            if cls.pin_primary:
                state.pinned_to_primary = True

    def unsolicited(self, backend: BackendConnection, data: bytes):
        """Bytes from a backend that is not serving the current request: async
        notices/notifications, or a FATAL before it closes."""
        try:
            events = backend.parser.feed(data)
        except ProtocolViolation:
            backend.abort()
            return
        raw = b"".join(e.raw for e in events)
        if not self.inflight:
            self.transport.write(raw)
        else:
            self.deferred_out.append(raw)

    def backend_lost(self, backend: BackendConnection, exc):
        if self.backends.get(backend.target) is backend:
            del self.backends[backend.target]
        if self.phase is not _READY:
            return
        affected = [e for e in self.inflight if e.backend is backend]
        if backend.target != PRIMARY:
            self.proxy.mark_replica_down(backend.target, f"connection lost: {exc or 'closed by server'}")
        if backend.target == PRIMARY or self.txn_target == backend.target:
            self.backend_failed(backend, f"backend {backend.address.describe()} closed the connection unexpectedly")
            return
        if not affected:
            return   # an idle replica connection: reconnect lazily when next needed
        if len(affected) == 1 and not affected[0].forwarded and affected[0] is self.inflight[0]:
            # A read that had not answered yet: run it again elsewhere, no client error.
            entry = self.inflight.popleft()
            self.proxy.replicas[backend.target].inflight -= 1
            self.proxy.stats.record_fallback(self.service, "replica_down")
            self.pending.appendleft(entry.request)
            self.pump()
            return
        self.backend_failed(backend, f"backend {backend.address.describe()} closed the connection unexpectedly")

    def backend_failed(self, backend: BackendConnection, reason: str):
        self.proxy.stats.record_error("backend_lost")
        log.warning("closing client session: %s", reason)
        self.fatal("08006", reason)

    # ----------------------------------------------------------- closing

    def fatal(self, sqlstate: str, text: str):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.error_response(sqlstate, text, "FATAL"))
        self.close()

    def close(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.phase = _CLOSED

