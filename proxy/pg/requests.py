"""Client requests: the unit the proxy routes.

A request is a simple Query, a FunctionCall, or the extended-protocol messages
up to a Sync (or up to a Flush, in which case the messages up to the next Sync
continue it on the same backend). Building one classifies its statements once
and records what routing and session tracking need.
"""
from __future__ import annotations

from clidash import sqlcomment
from clidash.policy import ModeSpec, PolicyError

from . import messages as m
from .classify import TxEffect

MAX_TAG_LENGTH = 128

_EXTENDED = (m.Parse, m.Bind, m.Describe, m.Execute, m.Close)


class Request:
    __slots__ = ("raw", "messages", "replica_ok", "reason", "route", "operation", "tx",
                 "executed", "referenced", "complete", "continues", "simple_begin",
                 "defines_statements", "needs_open_portal", "service", "hint", "bad_hint")

    def __init__(self, raw: bytes, messages: list, complete: bool, continues: bool):
        self.raw = raw
        self.messages = messages
        self.complete = complete        # ends with Sync/Query/FunctionCall: one ReadyForQuery follows
        self.continues = continues      # follows a Flush: must run where the previous part ran
        self.replica_ok = False
        self.reason = "write"
        self.route = ""
        self.operation = "other"
        self.tx = TxEffect.NONE
        self.executed = ()              # classifications whose session effects apply on success
        self.referenced = None          # statement names used but not parsed in this request
        self.simple_begin = False       # a lone simple-query BEGIN the proxy may defer
        self.defines_statements = False # has Parse or Close of a statement: session tracking needed
        self.needs_open_portal = False  # executes a portal bound by an earlier request
        self.service = None             # from the statement's tags; None: the session's
        self.hint = None                # clidash_consistency tag: a stronger mode wanted
        self.bad_hint = False           # the tag was there but not a mode


def simple_query(raw: bytes, sql: str, classifier) -> Request:
    cls = classifier.classify(sql)
    req = Request(raw, (), True, False)
    req.replica_ok = cls.replica_ok
    req.reason = cls.reason
    req.route = cls.route_id
    req.operation = cls.operation
    req.tx = cls.tx
    req.executed = (cls,)
    req.simple_begin = cls.tx is TxEffect.BEGIN and cls.statement_count == 1
    if "*/" in sql:
        apply_tags(req, sql)
    return req


def function_call(event: m.FunctionCall) -> Request:
    req = Request(event.raw, [event], True, False)
    req.reason = "function_call"
    req.route = "q_fastpath"
    return req


def extended(messages: list, complete: bool, continues: bool, statements: dict, classifier) -> Request:
    """Classify a batch. `statements` maps the session's prepared statement names
    to PreparedStatement (for Binds of statements parsed earlier)."""
    raw = messages[0].raw if len(messages) == 1 else b"".join(msg.raw for msg in messages)
    req = Request(raw, messages, complete, continues)
    parsed = {}       # name -> (classification, text), parsed in this batch
    bound = {}        # portal -> (classification, text)
    executed = []
    referenced = None
    everything = []
    unknown = (None, "")
    for msg in messages:
        kind = type(msg)
        if kind is m.Bind or (kind is m.Describe and msg.kind == "S"):
            name = msg.statement if kind is m.Bind else msg.name
            entry = parsed.get(name)
            if entry is None:
                ps = statements.get(name)
                entry = (ps.classification, ps.sql) if ps is not None else unknown
                if referenced is None:
                    referenced = []
                referenced.append(name)
            if kind is m.Bind:
                bound[msg.portal] = entry
            everything.append(entry)
        elif kind is m.Parse:
            entry = parsed[msg.statement] = (classifier.classify(msg.sql), msg.sql)
            everything.append(entry)
            req.defines_statements = True
        elif kind is m.Execute:
            if msg.portal not in bound:
                req.needs_open_portal = True
            executed.append(bound.get(msg.portal, unknown))
        elif kind is m.Close and msg.kind == "S":
            req.defines_statements = True
    considered = [cls for cls, _text in (executed or everything)]
    first_text = (executed or everything)[0][1] if considered else ""
    req.referenced = referenced
    if not considered:
        # Only Sync/Close/Describe-portal: harmless anywhere, but keep it on the primary.
        req.reason = "protocol"
        req.route = "q_protocol"
        return req
    first = considered[0]
    if any(c is None for c in considered):
        # A statement we never saw parsed (e.g. SQL-level PREPARE): the primary has it.
        req.reason = "unknown_statement"
        req.route = first.route_id if first is not None else "q_unknown"
        return req
    req.route = first.route_id
    req.tx = first.tx
    req.executed = tuple(cls for cls, _text in executed)
    if "*/" in first_text:
        apply_tags(req, first_text)
    if all(c.replica_ok for c in considered):
        req.replica_ok = True
        req.reason = first.reason
        req.operation = "read"
    else:
        blocking = next(c for c in considered if not c.replica_ok)
        req.reason = blocking.reason
        req.operation = "write" if any(c.operation == "write" for c in considered) else blocking.operation
    return req


_SYNC = m.sync()
_DESCRIBE_UNNAMED_PORTAL = m.message(b"D", b"P\0")


def prepared_execution(data: bytes, statements: dict):
    """Fast path for the most common extended batch: one read from the client
    holding exactly Bind(unnamed portal, known statement) [Describe portal]
    Execute Sync. Returns the same Request `extended` would build, without
    decoding every message into an event; None when data has any other shape."""
    n = len(data)
    if n < 24 or data[0] != 0x42 or not data.endswith(_SYNC) or data[5] != 0:
        return None
    bind_end = 1 + int.from_bytes(data[1:5], "big")
    name_end = data.find(b"\0", 6, bind_end)
    if name_end < 0 or bind_end > n - 5:
        return None
    ps = statements.get(data[6:name_end].decode("utf-8", "surrogateescape"))
    if ps is None:
        return None
    pos = bind_end
    if data.startswith(_DESCRIBE_UNNAMED_PORTAL, pos):
        pos += len(_DESCRIBE_UNNAMED_PORTAL)
    # Execute of the unnamed portal: 'E', int32 9, "\0", int32 max rows.
    if data[pos:pos + 6] != b"E\x00\x00\x00\x09\x00" or pos + 10 != n - 5:
        return None
    cls = ps.classification
    req = Request(data, (), True, False)
    req.replica_ok = cls.replica_ok
    req.reason = cls.reason
    req.route = cls.route_id
    req.operation = "read" if cls.replica_ok else cls.operation
    req.tx = cls.tx
    req.executed = (cls,)
    req.referenced = [ps.name]
    if "*/" in ps.sql:
        apply_tags(req, ps.sql)
    return req


_hint_cache: dict[str, ModeSpec | None] = {}


def parse_mode_hint(text: str) -> ModeSpec | None:
    """A consistency hint's mode, None when it is not one (cached: hints repeat)."""
    spec = _hint_cache.get(text, False)
    if spec is False:
        try:
            spec = ModeSpec.parse(text)
        except PolicyError:
            spec = None
        if len(_hint_cache) < 1024:
            _hint_cache[text] = spec
    return spec


def apply_tags(req: Request, sql: str) -> None:
    """sqlcommenter tags override the route and service and may carry a hint."""
    tags = sqlcomment.extract(sql)
    if not tags:
        return
    route = tags.get(sqlcomment.ROUTE_KEY)
    if route and len(route) <= MAX_TAG_LENGTH:
        req.route = route
    service = tags.get(sqlcomment.SERVICE_KEY)
    if service and len(service) <= MAX_TAG_LENGTH:
        req.service = service
    hint = tags.get(sqlcomment.CONSISTENCY_KEY)
    if hint:
        req.hint = parse_mode_hint(hint)
        req.bad_hint = req.hint is None
