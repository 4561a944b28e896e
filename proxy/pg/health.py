"""Readiness of a PostgreSQL proxy: listening, and its primary answered recently.

"Answered" is, in order of preference:
  * the lag monitor's primary sampling (every few ms, when replicas are
    configured): its newest sample is at most `fresh_s` old;
  * else a TCP connect to the primary, closed at once without sending a byte
    (PostgreSQL logs nothing for such a connection), at most one in flight,
    a success reused for `fresh_s`.
Redis is not part of readiness: without it the proxy serves its default mode.
"""
from __future__ import annotations

import asyncio
import time

FRESH_S = 2.0
CONNECT_TIMEOUT_S = 0.5   # under Kubernetes' default probe timeout of 1 s


class PgReadiness:
    def __init__(self, proxy, fresh_s: float = FRESH_S, timeout_s: float = CONNECT_TIMEOUT_S):
        self.proxy = proxy
        self.fresh_s = fresh_s
        self.timeout_s = timeout_s
        self._last_ok: float | None = None
        self._probe: asyncio.Task | None = None

    async def check(self) -> tuple[bool, str]:
        """(ready?, reason when not)."""
        proxy = self.proxy
        if not proxy.started:
            return False, "starting"
        if not proxy.listening:
            return False, "not listening"
        now = time.monotonic()
        latest = proxy.lag.history.latest if proxy.lag is not None else None
        if latest is not None and now - latest[0] <= self.fresh_s:
            return True, "ok"
        if self._last_ok is not None and now - self._last_ok <= self.fresh_s:
            return True, "ok"
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._connect(), name="readiness-probe")
        return await asyncio.shield(self._probe)

    async def _connect(self) -> tuple[bool, str]:
        address = self.proxy.primary
        where = f"{address.host}:{address.port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(address.host, address.port)
        except TimeoutError:
            return False, f"primary {where} did not accept a connection within {self.timeout_s} s"
        except OSError as exc:
            return False, f"primary {where} unreachable: {exc.strerror or exc}"
        writer.close()   # FIN, not RST: the server sees a silent EOF
        self._last_ok = time.monotonic()
        return True, "ok"

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
