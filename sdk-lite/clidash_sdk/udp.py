"""emit(): one fire-and-forget UDP datagram per application-level operation.

The datagram is JSON, `{"svc": ..., "op": ..., "latency": ...}` (latency in ms), sent
to 127.0.0.1:5775 or to CLIDASH_SDK_UDP=host:port. emit() never raises and never
waits: the socket is non-blocking, and any failure (no listener is not one, UDP does
not know) only adds one to the module-level counter `errors`.
"""
from __future__ import annotations

import math
import os
import socket
import threading
from json.encoder import encode_basestring_ascii as _json_str
from typing import Optional, Tuple

from ._route import _CURRENT, configured_service
from .sqlcommenter import SERVICE_KEY

__all__ = ["emit", "errors", "sent", "DEFAULT_ADDRESS", "ENV_VAR"]

DEFAULT_ADDRESS = "127.0.0.1:5775"
ENV_VAR = "CLIDASH_SDK_UDP"

errors = 0      # datagrams not sent: bad arguments, unresolvable address, send failure
sent = 0        # datagrams handed to the kernel

_lock = threading.Lock()
_spec: Optional[str] = None                      # the host:port text _sock/_addr were made for
_sock: Optional[socket.socket] = None
_addr: Optional[Tuple] = None
_pid = 0


def _parse(spec: str) -> Tuple[str, int]:
    host, sep, port = spec.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{ENV_VAR} must be host:port, got {spec!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _socket_for(spec: str) -> Tuple[socket.socket, Tuple]:
    """The socket and address for spec, made once per spec (and per process, after a fork)."""
    global _spec, _sock, _addr, _pid
    sock, addr = _sock, _addr
    if _spec == spec and sock is not None and _pid == os.getpid():
        return sock, addr   # type: ignore[return-value]
    with _lock:
        if _spec != spec or _sock is None or _pid != os.getpid():
            host, port = _parse(spec)
            # Resolved once, here: a numeric address (the default) resolves without I/O.
            family, _, _, _, addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            old = _sock if _pid == os.getpid() else None
            _sock, _addr, _spec, _pid = sock, addr, spec, os.getpid()
            if old is not None:
                old.close()
        return _sock, _addr   # type: ignore[return-value]


def emit(op: str, latency_ms: float, *, service: Optional[str] = None) -> None:
    """Send {"svc", "op", "latency"} for one operation. svc: service=, else the
    current route's service, else configure()'s default, else null."""
    global errors, sent
    try:
        if service is None:
            scope = _CURRENT.get()
            service = scope.tags.get(SERVICE_KEY) if scope is not None else None
            if service is None:
                service = configured_service()
        latency = float(latency_ms)
        if not isinstance(op, str) or not math.isfinite(latency):
            raise ValueError("op must be a string and latency_ms a finite number")
        # The same bytes as json.dumps(..., separators=(",", ":")), without its generic path.
        svc = "null" if service is None else _json_str(str(service))
        payload = ('{"svc":%s,"op":%s,"latency":%r}' % (svc, _json_str(op), latency)).encode()
        sock, addr = _socket_for(os.environ.get(ENV_VAR) or DEFAULT_ADDRESS)
        sock.sendto(payload, addr)
        sent += 1
    except Exception:   # noqa: BLE001 -- emit() must never break the caller
        with _lock:
            errors += 1
