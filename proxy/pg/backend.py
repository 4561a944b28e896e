"""One server connection: login, then a relay that hands each chunk to its owner.

The login runs once per connection (startup, authentication via auth.ServerLogin,
ParameterStatus and BackendKeyData until the first ReadyForQuery). After that
the protocol object only parses and hands events to the client session that
owns it; it never interprets the stream itself.
"""
from __future__ import annotations

import asyncio
import socket

from clidash.proxy.dsn import BackendAddress

from . import messages as m
from .auth import BackendAuthError, ServerLogin
from .framing import BackendParser, ProtocolViolation
from .session import BackendSessionState

CONNECT_TIMEOUT_S = 5.0


class BackendUnavailable(Exception):
    """A backend could not be reached or refused the login; the message names it."""

    def __init__(self, address: BackendAddress, reason: str, sqlstate: str = "08006"):
        super().__init__(f"backend {address.describe()} is unavailable: {reason}")
        self.address = address
        self.sqlstate = sqlstate


class BackendConnection(asyncio.Protocol):
    def __init__(self, address: BackendAddress, target: int):
        self.address = address
        self.target = target              # routing.PRIMARY or a replica index
        self.parser = BackendParser()
        self.session = BackendSessionState()
        self.parameters: dict[str, str] = {}
        self.process_id = 0
        self.secret_key = b""
        self.transport: asyncio.Transport | None = None
        self.owner = None                 # the ClientSession relaying for this connection
        self.closed = False
        self._login: ServerLogin | None = None
        self._ready: asyncio.Future | None = None
        self._login_error: BackendUnavailable | None = None

    # -- login ----------------------------------------------------------

    async def connect(self, startup_params: dict, timeout: float = CONNECT_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._login = ServerLogin(self.address.user, self.address.password)
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, self.address.host, self.address.port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(self.address, _describe_os_error(exc)) from None
        params = {"user": self.address.user, **startup_params}
        self.transport.write(m.startup_message(params))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except asyncio.TimeoutError:
            self.abort()
            raise BackendUnavailable(self.address, "login timed out") from None

    def _login_events(self, events) -> None:
        for event in events:
            kind = type(event)
            if kind is m.Authentication:
                reply = self._login.receive(event.body)
                if reply:
                    self.transport.write(reply)
            elif kind is m.ParameterStatus:
                self.parameters[event.name] = event.value
            elif kind is m.BackendKeyData:
                self.process_id, self.secret_key = event.process_id, event.secret_key
            elif kind is m.ErrorResponse:
                raise BackendUnavailable(self.address, f"{event.message} (SQLSTATE {event.sqlstate})",
                                         event.sqlstate or "08006")
            elif kind is m.ReadyForQuery:
                self.parser.relay_mode()
                self._login = None
                if not self._ready.done():
                    self._ready.set_result(None)
                return

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes):
        if self._login is None:
            owner = self.owner
            if owner is not None:
                owner.backend_data(self, data)
            return
        try:
            self._login_events(self.parser.feed(data))
        except (BackendAuthError, ProtocolViolation) as exc:
            self._fail_login(BackendUnavailable(self.address, str(exc)))
        except BackendUnavailable as exc:
            self._fail_login(exc)

    def _fail_login(self, exc: BackendUnavailable) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
        self.abort()

    def connection_lost(self, exc):
        self.closed = True
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(BackendUnavailable(
                self.address, "connection closed during login" + (f": {exc}" if exc else "")))
        owner = self.owner
        if owner is not None:
            owner.backend_lost(self, exc)

    def pause_writing(self):
        if self.owner is not None:
            self.owner.pause_client_reading()

    def resume_writing(self):
        if self.owner is not None:
            self.owner.resume_client_reading()

    # -- used by the owner ------------------------------------------------

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        """Polite close: Terminate, then close the socket."""
        if self.transport is not None and not self.closed:
            self.owner = None
            self.transport.write(m.terminate())
            self.transport.close()
            self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True


async def send_cancel(address: BackendAddress, process_id: int, secret_key: bytes) -> None:
    """Forward a CancelRequest to the server running the client's statement."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address.host, address.port), CONNECT_TIMEOUT_S)
    try:
        writer.write(m.cancel_request(process_id, secret_key))
        await writer.drain()
        # The server closes the connection when done; wait briefly for that.
        await asyncio.wait_for(reader.read(), CONNECT_TIMEOUT_S)
    finally:
        writer.close()


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connection timed out"
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
