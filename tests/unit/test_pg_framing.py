"""Byte-exact PostgreSQL message codecs, both directions, and bad input."""
import struct

import pytest

from clidash.proxy.pg import messages as m
from clidash.proxy.pg.framing import BackendParser, FrontendParser, ProtocolViolation


def msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!i", len(body) + 4) + body


def startup_bytes(params: dict) -> bytes:
    body = struct.pack("!i", 196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ready_parser() -> FrontendParser:
    p = FrontendParser()
    p.feed(startup_bytes({"user": "u"}))
    return p


# -- encoders ----------------------------------------------------------------

@pytest.mark.parametrize("encoded, expected", [
    (m.ready_for_query("I"), b"Z\x00\x00\x00\x05I"),
    (m.ready_for_query("T"), b"Z\x00\x00\x00\x05T"),
    (m.sync(), b"S\x00\x00\x00\x04"),
    (m.terminate(), b"X\x00\x00\x00\x04"),
    (m.query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
    (m.command_complete("BEGIN"), b"C\x00\x00\x00\x0aBEGIN\x00"),
    (m.parameter_status("a", "b"), b"S\x00\x00\x00\x08a\x00b\x00"),
    (m.backend_key_data(7, b"\x01\x02\x03\x04"), b"K\x00\x00\x00\x0c\x00\x00\x00\x07\x01\x02\x03\x04"),
    (m.close_statement("s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (m.cancel_request(5, b"abcd"), b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x05abcd"),
    (m.startup_message({"user": "u"}), b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"),
    (m.error_response("08P01", "bad", "FATAL"),
     b"E\x00\x00\x00\x1fSFATAL\x00VFATAL\x00C08P01\x00Mbad\x00\x00"),
])
def test_encoders_are_byte_exact(encoded, expected):
    assert encoded == expected


# -- frontend parser -----------------------------------------------------------

def test_startup_message_params_and_raw():
    raw = startup_bytes({"user": "app", "database": "db", "application_name": "svc"})
    (event,) = FrontendParser().feed(raw)
    assert isinstance(event, m.StartupMessage)
    assert event.params == {"user": "app", "database": "db", "application_name": "svc"}
    assert event.raw == raw


def test_ssl_then_startup():
    p = FrontendParser()
    (ssl,) = p.feed(struct.pack("!ii", 8, m.SSL_REQUEST_CODE))
    assert isinstance(ssl, m.SSLRequest)
    (startup,) = p.feed(startup_bytes({"user": "u"}))
    assert isinstance(startup, m.StartupMessage)


def test_cancel_request_decoded():
    (event,) = FrontendParser().feed(m.cancel_request(1234, b"\x00\x01\x02\x03"))
    assert isinstance(event, m.CancelRequest)
    assert (event.process_id, event.secret_key) == (1234, b"\x00\x01\x02\x03")


def test_extended_messages_decoded_and_raw_kept():
    parse = msg(b"P", b"s1\0SELECT $1\0\x00\x01\x00\x00\x00\x17")
    bind = msg(b"B", b"p1\0s1\0\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00")
    describe = msg(b"D", b"Pp1\0")
    execute = msg(b"E", b"p1\0\x00\x00\x00\x00")
    close = msg(b"C", b"Ss1\0")
    sync = msg(b"S", b"")
    events = ready_parser().feed(parse + bind + describe + execute + close + sync)
    assert [type(e) for e in events] == [m.Parse, m.Bind, m.Describe, m.Execute, m.Close, m.Sync]
    assert (events[0].statement, events[0].sql) == ("s1", "SELECT $1")
    assert (events[1].portal, events[1].statement) == ("p1", "s1")
    assert (events[2].kind, events[2].name) == ("P", "p1")
    assert events[3].portal == "p1"
    assert (events[4].kind, events[4].name) == ("S", "s1")
    assert b"".join(e.raw for e in events) == parse + bind + describe + execute + close + sync


def test_messages_split_across_reads_reassemble():
    data = msg(b"Q", b"SELECT 1\0") + msg(b"Q", b"SELECT 2\0")
    p = ready_parser()
    events = []
    for i in range(len(data)):
        events += p.feed(data[i:i + 1])
    assert [e.sql for e in events] == ["SELECT 1", "SELECT 2"]


@pytest.mark.parametrize("data, reason", [
    (b"Z\x00\x00\x00\x04", "invalid frontend message type"),
    (b"Q\x00\x00\x00\x02", "invalid message length"),
    (msg(b"Q", b"SELECT 1"), "not NUL-terminated"),
    (msg(b"D", b"X\0"), "invalid DESCRIBE"),
    (msg(b"P", b"name-without-terminator"), "unterminated string"),
    (b"Q\x7f\xff\xff\xff", "exceeds the limit"),
])
def test_malformed_frontend_messages_raise_protocol_violation(data, reason):
    with pytest.raises(ProtocolViolation, match=reason):
        ready_parser().feed(data)


@pytest.mark.parametrize("data", [
    struct.pack("!i", 4),                                  # too short
    struct.pack("!i", 100000) + b"x" * 8,                  # longer than PostgreSQL accepts
    struct.pack("!ii", 8, 0x00020000),                     # protocol 2.0
    startup_bytes({"database": "db"}),                     # no user
])
def test_bad_startup_packets(data):
    with pytest.raises(ProtocolViolation):
        FrontendParser().feed(data)


# -- backend parser ------------------------------------------------------------

def test_backend_rows_fold_into_one_passthrough_and_stream_is_whole():
    rows = msg(b"T", b"\x00\x00") + msg(b"D", b"\x00\x00") * 50 + msg(b"C", b"SELECT 50\0")
    data = rows + m.ready_for_query("I")
    p = BackendParser()
    p.relay_mode()
    events = p.feed(data)
    assert [type(e) for e in events] == [m.Passthrough, m.ReadyForQuery]
    assert events[0].raw == rows and events[1].status == "I"
    assert p.whole


def test_backend_error_parse_complete_and_partial_tail():
    err = m.error_response("42P01", "relation does not exist")
    data = msg(b"1", b"") + err + m.ready_for_query("E")
    p = BackendParser()
    p.relay_mode()
    events = p.feed(data[:-3])
    assert [type(e) for e in events] == [m.ParseComplete, m.ErrorResponse]
    assert events[1].sqlstate == "42P01" and events[1].message == "relation does not exist"
    assert not p.whole
    (ready,) = p.feed(data[-3:])
    assert ready.status == "E"


def test_backend_login_messages():
    data = (msg(b"R", struct.pack("!i", 0)) + m.parameter_status("server_version", "15.19")
            + m.backend_key_data(42, b"abcd") + m.ready_for_query("I"))
    events = BackendParser().feed(data)
    assert [type(e) for e in events] == [m.Authentication, m.ParameterStatus, m.BackendKeyData, m.ReadyForQuery]
    assert (events[1].name, events[1].value) == ("server_version", "15.19")
    assert (events[2].process_id, events[2].secret_key) == (42, b"abcd")


def test_backend_invalid_length_is_a_violation():
    p = BackendParser()
    with pytest.raises(ProtocolViolation):
        p.feed(b"D\x00\x00\x00\x01")


# -- the prepared-execution fast path builds what the general path builds -----

def _bind(portal: str, statement: str, params=(b"1",)) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0" + struct.pack("!h", 0)
    body += struct.pack("!h", len(params)) + b"".join(struct.pack("!i", len(p)) + p for p in params)
    return msg(b"B", body + struct.pack("!h", 0))


def _execute(portal: str = "") -> bytes:
    return msg(b"E", portal.encode() + b"\0" + struct.pack("!i", 0))


@pytest.mark.parametrize("sql", ["SELECT $1::int", "UPDATE t SET x = $1", "SELECT nextval('s')", "BEGIN READ ONLY"])
@pytest.mark.parametrize("describe", [True, False])
def test_prepared_execution_fast_path_matches_general_path(sql, describe):
    from clidash.proxy.pg import requests
    from clidash.proxy.pg.classify import Classifier
    from clidash.proxy.pg.session import BackendSessionState, SessionState

    classifier = Classifier()
    state = SessionState()
    state.parsed(m.Parse(msg(b"P", b"s1\0" + sql.encode() + b"\0\0\0"), "s1", sql),
                 classifier.classify(sql), BackendSessionState())
    data = _bind("", "s1") + (msg(b"D", b"P\0") if describe else b"") + _execute() + m.sync()
    fast = requests.prepared_execution(data, state.statements)
    general = requests.extended(ready_parser().feed(data), True, False, state.statements, classifier)
    fields = ("raw", "replica_ok", "reason", "route", "operation", "tx", "executed", "referenced",
              "complete", "continues", "defines_statements", "needs_open_portal")
    assert fast is not None
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(general, f) for f in fields}


@pytest.mark.parametrize("data", [
    _bind("p1", "s1") + _execute("p1") + m.sync(),          # named portal
    _bind("", "unknown") + _execute() + m.sync(),           # statement never parsed here
    _bind("", "s1") + _execute() + m.sync() + m.sync(),     # two Syncs
    _bind("", "s1") + _execute(),                           # no Sync
    _bind("", "s1") + msg(b"D", b"Ss1\0") + _execute() + m.sync(),
])
def test_prepared_execution_fast_path_declines_other_shapes(data):
    from clidash.proxy.pg import requests
    from clidash.proxy.pg.session import PreparedStatement
    statements = {"s1": PreparedStatement("s1", "SELECT 1", b"", object())}
    assert requests.prepared_execution(data, statements) is None


def test_newer_protocol_minor_is_negotiated_down_to_3_0():
    from clidash.proxy.pg.startup import AuthConfig, ClientStartup
    body = struct.pack("!i", 0x00030002) + b"user\0u\0_pq_.x\0y\0\0"
    (startup,) = FrontendParser().feed(struct.pack("!i", len(body) + 4) + body)
    reply, outcome = ClientStartup(AuthConfig("trust", {}), False).receive(startup)
    assert reply.startswith(m.negotiate_protocol_version(0, ["_pq_.x"]))
    assert "_pq_.x" not in outcome.params


@pytest.mark.parametrize("data, expected", [
    (msg(b"T", b"\0\0") + msg(b"D", b"\0\0") + msg(b"C", b"SELECT 1\0") + m.ready_for_query("I"), "I"),
    (m.ready_for_query("T"), "T"),
    (msg(b"1", b"") + m.ready_for_query("I"), None),                       # ParseComplete: track it
    (m.error_response("42P01", "x") + m.ready_for_query("E"), None),        # an error: count it
    (msg(b"D", b"\0\0") + m.ready_for_query("I")[:-1], None),               # truncated
    (msg(b"D", b"xxZ\x00\x00\x00\x05I"), None),                             # Z inside a row, not a message
    (msg(b"D", b"\0\0")[:-1] + m.ready_for_query("I"), None),               # boundaries do not line up
])
def test_ends_with_ready(data, expected):
    from clidash.proxy.pg.framing import ends_with_ready
    assert ends_with_ready(data) == expected


def test_datarow_digest_looks_at_rows_only_and_in_order():
    from clidash.proxy.pg.audit import datarow_digest
    rows_a = msg(b"D", b"\x00\x01\x00\x00\x00\x011") + msg(b"D", b"\x00\x01\x00\x00\x00\x012")
    rows_b = msg(b"D", b"\x00\x01\x00\x00\x00\x012") + msg(b"D", b"\x00\x01\x00\x00\x00\x011")
    framing_a = msg(b"T", b"\x00\x00") + rows_a + msg(b"C", b"SELECT 2\0") + m.ready_for_query("I")
    framing_b = msg(b"2", b"") + rows_a + msg(b"C", b"SELECT 2\0") + m.ready_for_query("I")
    assert datarow_digest([framing_a]) == datarow_digest([framing_b])   # only the rows count
    assert datarow_digest([rows_a]) != datarow_digest([rows_b])         # order matters
