"""The client's side of connection start, sans-IO: SSL/GSS negotiation, the
StartupMessage, CancelRequest and authentication.

`ClientStartup.receive(event)` returns what to send and, when the phase is
over, an outcome: Authenticated (connect the backends, then greet the client),
CancelRequested (forward a cancel, close) or Rejected (send the error, close).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import messages as m
from .auth import AuthFailed, ClientAuthenticator, Credentials
from .framing import ProtocolViolation

# Startup parameters the proxy consumes itself instead of forwarding.
_NOT_FORWARDED = {"user", "database", "replication"}


@dataclass(frozen=True, slots=True)
class AuthConfig:
    method: str                              # scram-sha-256 | md5 | password | trust
    users: dict = field(hash=False)          # user name -> Credentials
    trust_loopback: bool = False


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    database: str | None
    params: dict                             # forwarded to the backends


@dataclass(frozen=True, slots=True)
class CancelRequested:
    process_id: int
    secret_key: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    error: bytes                             # a complete ErrorResponse message


class ClientStartup:
    def __init__(self, auth: AuthConfig, peer_is_loopback: bool):
        self._auth = auth
        self._loopback = peer_is_loopback
        self._authenticator: ClientAuthenticator | None = None
        self._startup: m.StartupMessage | None = None
        self.expect_startup_packet = False   # set after answering SSL/GSS requests

    def receive(self, event) -> tuple[bytes, object | None]:
        kind = type(event)
        if self._authenticator is not None:
            if kind is not m.PasswordMessage:
                return b"", Rejected(m.error_response("08P01", "expected password response", "FATAL"))
            try:
                reply = self._authenticator.receive(ord("p"), event.body)
            except AuthFailed as exc:
                return b"", Rejected(_auth_error(exc))
            return reply, self._authenticated() if self._authenticator.done else None
        if kind is m.SSLRequest or kind is m.GSSENCRequest:
            # No TLS/GSS encryption on the client side yet: libpq then continues in clear text.
            self.expect_startup_packet = True
            return b"N", None
        if kind is m.CancelRequest:
            return b"", CancelRequested(event.process_id, event.secret_key)
        if kind is m.StartupMessage:
            return self._start(event)
        raise ProtocolViolation(f"unexpected {kind.__name__} during startup")

    def _start(self, startup: m.StartupMessage):
        self._startup = startup
        params = startup.params
        user = params["user"]
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            return b"", Rejected(m.error_response(
                "0A000", "replication connections are not supported by the CLIDash proxy", "FATAL"))
        method = self._auth.method
        if self._loopback and self._auth.trust_loopback:
            method = "trust"
        credentials: Credentials | None = self._auth.users.get(user)
        self._authenticator = ClientAuthenticator(method, user, credentials)
        try:
            first = self._authenticator.start()
        except AuthFailed as exc:
            return b"", Rejected(_auth_error(exc))
        return _negotiation(startup) + first, self._authenticated() if self._authenticator.done else None

    def _authenticated(self) -> Authenticated:
        params = self._startup.params
        forwarded = {k: v for k, v in params.items() if k not in _NOT_FORWARDED and not k.startswith("_pq_.")}
        return Authenticated(params["user"], params.get("database"), forwarded)


def _negotiation(startup: m.StartupMessage) -> bytes:
    """A client asking for a newer 3.x minor version or _pq_ options learns
    that we speak 3.0 without them, as PostgreSQL answers."""
    unknown = sorted(k for k in startup.params if k.startswith("_pq_."))
    if (startup.protocol & 0xFFFF) == 0 and not unknown:
        return b""
    return m.negotiate_protocol_version(0, unknown)


def _auth_error(exc: AuthFailed) -> bytes:
    return m.error_response(exc.sqlstate, exc.message, exc.severity, detail=exc.detail)
