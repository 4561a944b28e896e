"""PostgreSQL protocol v3 messages as events, and encoders for the ones the proxy writes.

Every event keeps its raw bytes (type byte, length and body) so the proxy can
forward what it received untouched; the decoded fields are only what routing
and session tracking need. Layouts follow the "Message Formats" section of the
PostgreSQL frontend/backend protocol chapter.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608          # major 3, minor 0
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


# --------------------------------------------------------------------------
# Startup-phase packets (no type byte)

@dataclass(frozen=True, slots=True)
class StartupMessage:
    raw: bytes
    protocol: int
    params: dict = field(hash=False)


@dataclass(frozen=True, slots=True)
class SSLRequest:
    raw: bytes


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CancelRequest:
    raw: bytes
    process_id: int
    secret_key: bytes


# --------------------------------------------------------------------------
# Frontend (client -> server) messages

@dataclass(frozen=True, slots=True)
class Query:
    raw: bytes
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    raw: bytes
    statement: str
    sql: str


@dataclass(frozen=True, slots=True)
class Bind:
    raw: bytes
    portal: str
    statement: str


@dataclass(frozen=True, slots=True)
class Describe:
    raw: bytes
    kind: str          # "S" statement or "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    raw: bytes
    portal: str


@dataclass(frozen=True, slots=True)
class Close:
    raw: bytes
    kind: str          # "S" statement or "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Flush:
    raw: bytes


@dataclass(frozen=True, slots=True)
class FunctionCall:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyData:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyFail:
    raw: bytes


@dataclass(frozen=True, slots=True)
class Terminate:
    raw: bytes


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': PasswordMessage, SASLInitialResponse or SASLResponse (context decides)."""
    raw: bytes
    body: bytes


# --------------------------------------------------------------------------
# Backend (server -> client) messages the proxy looks at. Everything else is
# folded into Passthrough so a large result costs one event, not one per row.

@dataclass(frozen=True, slots=True)
class Passthrough:
    raw: bytes


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    raw: bytes
    status: str        # "I" idle, "T" in transaction, "E" failed transaction


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    raw: bytes
    fields: dict = field(hash=False)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    raw: bytes
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    raw: bytes
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class Authentication:
    raw: bytes
    body: bytes        # starts with the int32 auth code


@dataclass(frozen=True, slots=True)
class ParseComplete:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CommandComplete:
    raw: bytes
    tag: str


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    raw: bytes


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    raw: bytes


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    raw: bytes


# --------------------------------------------------------------------------
# Small decoding helpers

def read_cstr(buf: bytes, pos: int) -> tuple[str, int]:
    """A NUL-terminated string at pos; raises ValueError when unterminated."""
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode("utf-8", "replace"), end + 1


def decode_fields(body: bytes) -> dict:
    """Fields of an ErrorResponse/NoticeResponse body: code byte + cstring, NUL-terminated."""
    fields = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = read_cstr(body, pos + 1)
        fields[code] = value
    return fields


# --------------------------------------------------------------------------
# Encoders for what the proxy itself sends

def message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + _INT32.pack(len(body) + 4) + body


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def error_response(sqlstate: str, text: str, severity: str = "ERROR", detail: str | None = None,
                   hint: str | None = None) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return message(b"E", body + b"\0")


def notice_response(sqlstate: str, text: str, severity: str = "WARNING") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(text)
    return message(b"N", body + b"\0")


def ready_for_query(status: str) -> bytes:
    return message(b"Z", status.encode())


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(process_id: int, secret_key: bytes) -> bytes:
    return message(b"K", _INT32.pack(process_id) + secret_key)


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def query(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def sync() -> bytes:
    return message(b"S")


def terminate() -> bytes:
    return message(b"X")


def close_statement(name: str) -> bytes:
    return message(b"C", b"S" + cstr(name))


def startup_message(params: dict, protocol: int = PROTOCOL_3_0) -> bytes:
    body = _INT32.pack(protocol) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _INT32.pack(len(body) + 4) + body


def cancel_request(process_id: int, secret_key: bytes) -> bytes:
    body = _INT32.pack(CANCEL_REQUEST_CODE) + _INT32.pack(process_id) + secret_key
    return _INT32.pack(len(body) + 4) + body


def negotiate_protocol_version(newest_minor: int, unrecognized: list[str]) -> bytes:
    body = _INT32.pack(newest_minor) + _INT32.pack(len(unrecognized)) + b"".join(cstr(o) for o in unrecognized)
    return message(b"v", body)
