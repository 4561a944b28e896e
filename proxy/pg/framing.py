"""Sans-IO framing: bytes in, message events out, for both directions.

FrontendParser reads what a client sends (startup packets, then typed
messages); BackendParser reads what a server sends. Neither does IO, keeps a
clock or logs; malformed input raises ProtocolViolation, which the IO shell
answers with an ErrorResponse (SQLSTATE 08P01) before closing.
"""
from __future__ import annotations

import struct

from . import messages as m

_INT32 = struct.Struct("!i")
_unpack_int32 = _INT32.unpack_from

# PostgreSQL refuses startup packets longer than this (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection cannot continue."""

    sqlstate = "08P01"


def _text(raw: bytes, start: int, end: int) -> str:
    # surrogateescape keeps non-UTF-8 client encodings lossless; such text just
    # fails to parse later and is routed to the primary.
    return raw[start:end].decode("utf-8", "surrogateescape")


def _cstr_at(raw: bytes, pos: int) -> tuple[str, int]:
    end = raw.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    return _text(raw, pos, end), end + 1


# -- frontend message decoders: raw -> event ---------------------------------

def _decode_query(raw):
    if raw[-1] != 0:
        raise ProtocolViolation("Query string is not NUL-terminated")
    return m.Query(raw, _text(raw, 5, len(raw) - 1))


def _decode_parse(raw):
    name, pos = _cstr_at(raw, 5)
    sql, pos = _cstr_at(raw, pos)
    if len(raw) < pos + 2:
        raise ProtocolViolation("Parse message is truncated")
    return m.Parse(raw, name, sql)


def _decode_bind(raw):
    portal, pos = _cstr_at(raw, 5)
    statement, _ = _cstr_at(raw, pos)
    return m.Bind(raw, portal, statement)


def _decode_describe(raw):
    if len(raw) < 7 or raw[5] not in b"SP":
        raise ProtocolViolation("invalid DESCRIBE message subtype")
    return m.Describe(raw, chr(raw[5]), _cstr_at(raw, 6)[0])


def _decode_close(raw):
    if len(raw) < 7 or raw[5] not in b"SP":
        raise ProtocolViolation("invalid CLOSE message subtype")
    return m.Close(raw, chr(raw[5]), _cstr_at(raw, 6)[0])


def _decode_execute(raw):
    portal, pos = _cstr_at(raw, 5)
    if len(raw) < pos + 4:
        raise ProtocolViolation("Execute message is truncated")
    return m.Execute(raw, portal)


_FRONTEND_DECODERS = {
    ord("Q"): _decode_query,
    ord("P"): _decode_parse,
    ord("B"): _decode_bind,
    ord("D"): _decode_describe,
    ord("E"): _decode_execute,
    ord("C"): _decode_close,
    ord("S"): m.Sync,
    ord("H"): m.Flush,
    ord("F"): m.FunctionCall,
    ord("d"): m.CopyData,
    ord("c"): m.CopyDone,
    ord("f"): m.CopyFail,
    ord("X"): m.Terminate,
    ord("p"): lambda raw: m.PasswordMessage(raw, raw[5:]),
}


class FrontendParser:
    """Client -> proxy. Starts in the startup phase (untyped packets)."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self.in_startup = True
        self._buf = b""

    def feed(self, data: bytes) -> list:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events = []
        pos, n = 0, len(data)
        while True:
            if self.in_startup:
                if n - pos < 4:
                    break
                length = _unpack_int32(data, pos)[0]
                if length < 8 or length > MAX_STARTUP_PACKET:
                    raise ProtocolViolation("invalid length of startup packet")
                end = pos + length
                if end > n:
                    break
                event = self._decode_startup(data[pos:end])
            else:
                if n - pos < 5:
                    if n > pos and data[pos] not in _FRONTEND_DECODERS:
                        raise ProtocolViolation(f"invalid frontend message type {data[pos]}")
                    break
                length = _unpack_int32(data, pos + 1)[0]
                if length < 4:
                    raise ProtocolViolation("invalid message length")
                if length > self.max_message:
                    raise ProtocolViolation(f"message of {length} bytes exceeds the limit of {self.max_message}")
                decoder = _FRONTEND_DECODERS.get(data[pos])
                if decoder is None:
                    raise ProtocolViolation(f"invalid frontend message type {data[pos]}")
                end = pos + 1 + length
                if end > n:
                    break
                event = decoder(data if (pos == 0 and end == n) else data[pos:end])
            events.append(event)
            pos = end
        if pos < n:
            self._buf = data[pos:]
        return events

    @property
    def idle(self) -> bool:
        """No partial message is buffered: the next bytes start a new message."""
        return not self._buf and not self.in_startup

    def _decode_startup(self, raw: bytes):
        code = _unpack_int32(raw, 4)[0]
        if code == m.SSL_REQUEST_CODE and len(raw) == 8:
            return m.SSLRequest(raw)
        if code == m.GSSENC_REQUEST_CODE and len(raw) == 8:
            return m.GSSENCRequest(raw)
        if code == m.CANCEL_REQUEST_CODE:
            if len(raw) < 16 or len(raw) > 8 + 256:
                raise ProtocolViolation("invalid length of cancel request")
            return m.CancelRequest(raw, _unpack_int32(raw, 8)[0], raw[12:])
        if code >> 16 != 3:
            raise ProtocolViolation(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0")
        if raw[-1] != 0:
            raise ProtocolViolation("startup packet is not NUL-terminated")
        params = {}
        pos = 8
        while pos < len(raw) - 1:
            key, pos = _cstr_at(raw, pos)
            value, pos = _cstr_at(raw, pos)
            params[key] = value
        if "user" not in params or not params["user"]:
            raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
        self.in_startup = False
        return m.StartupMessage(raw, code, params)

    def expect_startup_again(self) -> None:
        """After answering SSLRequest/GSSENCRequest the client sends another startup packet."""
        self.in_startup = True


# -- backend ---------------------------------------------------------------

def _decode_ready(raw):
    return m.ReadyForQuery(raw, chr(raw[5]) if len(raw) > 5 else "I")


def _decode_error(raw):
    return m.ErrorResponse(raw, m.decode_fields(raw[5:]))


def _decode_parameter_status(raw):
    name, pos = _cstr_at(raw, 5)
    value, _ = _cstr_at(raw, pos)
    return m.ParameterStatus(raw, name, value)


def _decode_key_data(raw):
    return m.BackendKeyData(raw, _unpack_int32(raw, 5)[0], raw[9:])


_RELAY_DECODERS = {
    ord("Z"): _decode_ready,
    ord("E"): _decode_error,
    ord("1"): m.ParseComplete,
}
_LOGIN_DECODERS = dict(_RELAY_DECODERS)
_LOGIN_DECODERS.update({
    ord("R"): lambda raw: m.Authentication(raw, raw[5:]),
    ord("S"): _decode_parameter_status,
    ord("K"): _decode_key_data,
    ord("N"): m.NoticeResponse,
    ord("v"): m.Passthrough,
})


class BackendParser:
    """Server -> proxy. Messages routing does not care about are folded into
    Passthrough runs, so a thousand DataRows cost one event."""

    def __init__(self, max_message: int = 1 << 30):
        self.max_message = max_message
        self._buf = b""
        self._decoders = _LOGIN_DECODERS
        # True when the last feed's events tile exactly the bytes passed in,
        # so the shell may forward the original chunk with one write.
        self.whole = False

    def relay_mode(self) -> None:
        self._decoders = _RELAY_DECODERS

    @property
    def idle(self) -> bool:
        """No partial message is buffered."""
        return not self._buf

    def feed(self, data: bytes) -> list:
        whole = not self._buf
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events = []
        decoders = self._decoders
        pos = run_start = 0
        n = len(data)
        while n - pos >= 5:
            length = _unpack_int32(data, pos + 1)[0]
            if length < 4 or length > self.max_message:
                raise ProtocolViolation(f"server sent an invalid message length {length}")
            end = pos + 1 + length
            if end > n:
                break
            decoder = decoders.get(data[pos])
            if decoder is not None:
                if run_start < pos:
                    events.append(m.Passthrough(data[run_start:pos]))
                events.append(decoder(data[pos:end]))
                run_start = end
            pos = end
        if run_start < pos:
            events.append(m.Passthrough(data if (run_start == 0 and pos == n) else data[run_start:pos]))
        if pos < n:
            self._buf = data[pos:]
            whole = False
        self.whole = whole
        return events


_ERROR, _PARSE_COMPLETE, _READY = ord("E"), ord("1"), ord("Z")


def ends_with_ready(data: bytes) -> str | None:
    """The ReadyForQuery status when data is whole messages ending with
    ReadyForQuery and holding no ErrorResponse or ParseComplete (the messages
    session tracking needs); else None. Cheaper than feeding the parser."""
    n = len(data)
    if n < 6 or data[n - 6] != _READY or data[n - 5:n - 1] != b"\x00\x00\x00\x05":
        return None
    pos = 0
    last = n - 6
    while pos < last:
        kind = data[pos]
        if kind == _ERROR or kind == _PARSE_COMPLETE or kind == _READY:
            return None
        length = _unpack_int32(data, pos + 1)[0]
        if length < 4:
            return None
        pos += 1 + length
    return chr(data[n - 1]) if pos == last else None
