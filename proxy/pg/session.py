"""Per-client session state, sans-IO: what must hold on whichever backend runs
the client's next statement.

A client session may use several backends (the primary and, lazily, replicas).
The session keeps:
- the client's prepared statements (protocol-level, by name) and, per backend,
  which of them exist there, so a statement prepared on one backend is prepared
  on another just before it first runs there;
- an ordered log of session-level state changes (SET, RESET, DISCARD ALL, ...)
  that each backend replays up to the log's end before it serves a request;
- the transaction state reported by ReadyForQuery, and pinning to the primary.

The IO shell asks `preamble_for(backend, request)` before sending a request;
the preamble is complete protocol messages ending in ReadyForQuery-producing
messages whose responses the shell swallows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import messages as m


@dataclass(eq=False, slots=True)
class PreparedStatement:
    name: str
    sql: str
    parse_raw: bytes          # the client's Parse message, replayed as is
    classification: object


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    seq: int
    sql: str
    drops_prepared: bool      # DISCARD ALL / DEALLOCATE ALL


@dataclass(eq=False, slots=True)
class BackendSessionState:
    """What one backend connection holds of this client's session."""

    prepared: dict = field(default_factory=dict)    # name -> PreparedStatement
    to_close: set = field(default_factory=set)      # statement names to drop here first
    applied_seq: int = 0                            # replay log position reached


@dataclass(slots=True)
class Preamble:
    data: bytes
    responses: int            # ReadyForQuery messages to swallow


class SessionState:
    def __init__(self):
        self.statements: dict[str, PreparedStatement] = {}
        self._log: list[ReplayEntry] = []
        self._seq = 0
        self._txn_pending: list[tuple[str, bool]] = []
        self.pinned_to_primary = False
        self.deferred_begin: bytes | None = None

    @property
    def has_changes(self) -> bool:
        """Any session-level change (SET, RESET, ...) so far."""
        return self._seq > 0 or bool(self._txn_pending)

    def parse_messages(self, names) -> bytes | None:
        """The Parse messages of these statements, None if one is unknown here."""
        parts = []
        for name in names or ():
            ps = self.statements.get(name)
            if ps is None:
                return None
            parts.append(ps.parse_raw)
        return b"".join(parts)

    # -- prepared statements ----------------------------------------------

    def parsed(self, parse: m.Parse, classification, backend: BackendSessionState) -> PreparedStatement:
        """A Parse is being sent to backend: assume success until the response says otherwise."""
        ps = PreparedStatement(parse.statement, parse.sql, parse.raw, classification)
        self.statements[parse.statement] = ps
        backend.prepared[parse.statement] = ps
        return ps

    def parse_failed(self, ps: PreparedStatement, backend: BackendSessionState) -> None:
        if backend.prepared.get(ps.name) is ps:
            del backend.prepared[ps.name]
        if self.statements.get(ps.name) is ps:
            del self.statements[ps.name]

    def closed(self, name: str, backend: BackendSessionState, others) -> None:
        """Close 'S' (or DEALLOCATE name) ran on backend; drop it elsewhere lazily."""
        self.statements.pop(name, None)
        backend.prepared.pop(name, None)
        backend.to_close.discard(name)
        if name:
            for other in others:
                if name in other.prepared:
                    other.to_close.add(name)

    # -- session-level state log -----------------------------------------

    def state_changed(self, sql: str, drops_prepared: bool, origin: BackendSessionState,
                      in_transaction: bool) -> None:
        """A session-level change ran on origin. Inside a transaction it only
        counts once the transaction commits."""
        if in_transaction:
            self._txn_pending.append((sql, drops_prepared))
            return
        self._append(sql, drops_prepared, origin)

    def transaction_ended(self, committed: bool, origin: BackendSessionState) -> None:
        pending, self._txn_pending = self._txn_pending, []
        if committed:
            for sql, drops in pending:
                self._append(sql, drops, origin)

    def _append(self, sql: str, drops_prepared: bool, origin: BackendSessionState) -> None:
        self._seq += 1
        entry = ReplayEntry(self._seq, sql, drops_prepared)
        if _resets_everything(sql):
            # RESET ALL / DISCARD ALL make earlier entries irrelevant.
            self._log = [entry]
        else:
            self._log.append(entry)
        if origin.applied_seq == self._seq - 1:
            origin.applied_seq = self._seq
        if drops_prepared:
            self.statements.clear()
            origin.prepared.clear()
            origin.to_close.clear()

    def discarded_all(self) -> None:
        self.pinned_to_primary = False

    # -- what a backend must be sent before a request ----------------------

    def preamble_for(self, backend: BackendSessionState, referenced: list[str] | None) -> Preamble | None:
        """Messages that bring backend up to date for a request that uses the
        statements named in `referenced` (without parsing them itself)."""
        parts = []
        responses = 0
        if backend.applied_seq < self._seq:
            replay = [e for e in self._log if e.seq > backend.applied_seq]
            if any(e.drops_prepared for e in replay):
                backend.prepared.clear()
                backend.to_close.clear()
            parts.append(m.query("; ".join(e.sql for e in replay)))
            responses += 1
            backend.applied_seq = self._seq
        messages = []
        if referenced:
            for name in referenced:
                ps = self.statements.get(name)
                if ps is None:
                    continue   # unknown here (e.g. SQL-level PREPARE): let the server answer
                have = backend.prepared.get(name)
                if have is ps:
                    continue
                if have is not None and name:
                    backend.to_close.add(name)
                messages.append(ps.parse_raw)
                backend.prepared[name] = ps
        if backend.to_close:
            closes = [m.close_statement(name) for name in sorted(backend.to_close)]
            backend.to_close.clear()
            messages[:0] = closes
        if messages:
            parts.append(b"".join(messages) + m.sync())
            responses += 1
        if self.deferred_begin is not None:
            parts.append(self.deferred_begin)
            responses += 1
            self.deferred_begin = None
        if not parts:
            return None
        return Preamble(b"".join(parts), responses)


def _resets_everything(sql: str) -> bool:
    text = " ".join(sql.split()).upper().rstrip(";")
    return text in ("RESET ALL", "DISCARD ALL")
