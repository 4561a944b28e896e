"""Replica health, protocol-neutral: a periodic probe per replica flips the
`healthy` flag routing reads. A replica that fails is skipped (its reads go to
the primary) and is probed again every interval until it answers."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

from .routing import ReplicaView

log = logging.getLogger("clidash.proxy.replicas")


class ReplicaMonitor:
    def __init__(self, views: Sequence[ReplicaView], probe: Callable[[int], Awaitable[None]],
                 interval_s: float = 1.0, timeout_s: float = 2.0):
        self.views = views
        self.probe = probe
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    def mark_down(self, index: int, reason: str) -> None:
        view = self.views[index]
        if view.healthy:
            log.warning("replica %s marked down: %s", view.name, reason)
        view.healthy = False

    async def check(self, index: int) -> None:
        view = self.views[index]
        try:
            await asyncio.wait_for(self.probe(index), self.timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure means "not usable now"
            self.mark_down(index, f"{type(exc).__name__}: {exc}")
        else:
            if not view.healthy:
                log.warning("replica %s is back", view.name)
            view.healthy = True

    async def run(self) -> None:
        while True:
            await asyncio.gather(*(self.check(i) for i in range(len(self.views))))
            await asyncio.sleep(self.interval_s)
