"""Run a proxy process until SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import signal

from clidash.config import ProxyConfig

log = logging.getLogger("clidash.proxy")


def install_event_loop_policy() -> str:
    """uvloop when available: it roughly halves the per-message cost of the IO shell."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def serve(config: ProxyConfig, ready=None) -> None:
    if config.protocol != "postgresql":
        raise NotImplementedError(f"protocol {config.protocol} is not available in this version yet")
    from .pg.server import PgProxy
    proxy = PgProxy(config)
    await proxy.start()
    log.info("clidash proxy (%s) listening on %s:%d, primary %s, %d replica(s), mode %s",
             config.protocol, config.listen_host, config.listen_port, proxy.primary.describe(),
             len(proxy.replicas), config.mode)
    if proxy.http is not None:
        host, port = proxy.http.address
        log.info("metrics and health on http://%s:%d (/metrics, /livez, /readyz, /startup)",
                 f"[{host}]" if ":" in host else host, port)
    if ready is not None:
        ready(proxy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await proxy.close()


def run(config: ProxyConfig) -> None:
    install_event_loop_policy()
    asyncio.run(serve(config))
