"""A minimal transparent TCP byte pipe: the floor any Python proxy on this event loop pays.

It parses nothing and routes nothing: each accepted connection gets one upstream
connection and bytes are copied both ways. Backpressure: when one side's write
buffer fills, reading from the other side is paused until it drains.

    python bench/bytepipe.py --listen 127.0.0.1:7432 --target 127.0.0.1:5432
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket


class _Side(asyncio.Protocol):
    """One end of a pipe; forwards what it reads to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close this side; connection_lost then closes the peer (after it flushes)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.close()

    # Our transport's write buffer is full: stop reading from the peer until it drains.
    def pause_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer and self.peer.transport:
            self.peer.transport.resume_reading()


class _ClientSide(_Side):
    """Accepted connection; opens the upstream one and holds reads until it is up."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target
        self.early: list[bytes] = []  # bytes that arrive before the upstream is connected

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            # pause_reading() in connection_made does not stop a read uvloop already has in hand.
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.pause_reading()  # type: ignore[attr-defined]
        asyncio.get_running_loop().create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, *self.target)
        except OSError:
            self.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        if self.transport.is_closing():  # client left while we were connecting
            upstream.transport.close()
            return
        if self.early:
            upstream.transport.write(b"".join(self.early))
            self.early.clear()
        self.transport.resume_reading()


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ClientSide(target), *listen, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"bytepipe {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # still a valid (slower) baseline on plain asyncio
        uvloop = None
    coro = serve(_host_port(args.listen), _host_port(args.target))
    if uvloop is not None:
        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
