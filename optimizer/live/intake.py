"""Reading clidash:telemetry as one consumer of the `optimizer` consumer group.

Entries are acknowledged by `sharing.Sharing.flush` once they are folded into a
partial window in Redis, never here (except entries with nothing to fold).
After a Redis error, or at start, the consumer first re-reads its own pending
entries (XREADGROUP ... 0): they were delivered but never made it into Redis.
Entries another consumer left pending longer than `claim_idle_ms` (it died) are
taken over with XAUTOCLAIM.
"""
from __future__ import annotations

import logging

import redis

from clidash.redis_keys import TELEMETRY_GROUP, TELEMETRY_STREAM

log = logging.getLogger("clidash.optimizer.live")

READ_COUNT = 500

Entry = tuple[str, dict | None]     # (id, fields); fields None: the entry was trimmed away


def ensure_group(r: redis.Redis) -> bool:
    """XGROUP CREATE clidash:telemetry optimizer $ MKSTREAM; True when it was created now."""
    try:
        r.xgroup_create(TELEMETRY_STREAM, TELEMETRY_GROUP, id="$", mkstream=True)
        return True
    except redis.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise


class TelemetryIntake:
    def __init__(self, r: redis.Redis, consumer: str, claim_idle_ms: int):
        self.r = r
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.recover_pending = True     # re-read our own pending entries first
        self._claim_cursor = "0-0"

    def read(self, block_ms: int) -> list[Entry]:
        """The next batch: our own pending entries while recovering, else new ones (blocking)."""
        try:
            if self.recover_pending:
                batch = self._xreadgroup("0", None)
                if batch:
                    return batch
                self.recover_pending = False
            return self._xreadgroup(">", max(1, int(block_ms)))
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group vanished (Redis restarted empty, someone deleted it): recreate.
            log.warning("telemetry consumer group is gone (%s); creating it again", exc)
            ensure_group(self.r)
            return []

    def _xreadgroup(self, start: str, block_ms: int | None) -> list[Entry]:
        reply = self.r.xreadgroup(TELEMETRY_GROUP, self.consumer, {TELEMETRY_STREAM: start},
                                  count=READ_COUNT, block=block_ms)
        if not reply:
            return []
        # RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}.
        streams = reply.items() if isinstance(reply, dict) else reply
        out: list[Entry] = []
        for _name, entries in streams:
            for entry in entries or ():
                entry_id, fields = entry[0], entry[1]
                if entry_id is not None:
                    out.append((entry_id, fields or None))     # empty fields: trimmed while pending
        return out

    def claim_abandoned(self) -> list[Entry]:
        """Entries idle in other consumers' pending lists for longer than claim_idle_ms."""
        reply = self.r.xautoclaim(TELEMETRY_STREAM, TELEMETRY_GROUP, self.consumer, self.claim_idle_ms,
                                  start_id=self._claim_cursor, count=READ_COUNT)
        self._claim_cursor = reply[0] or "0-0"
        out = [(entry_id, fields or None) for entry_id, fields in reply[1]]
        # Redis 7 also lists ids whose entries were trimmed: they are no longer pending, nothing to do.
        return out

    def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.r.xack(TELEMETRY_STREAM, TELEMETRY_GROUP, *entry_ids)

    def leave(self) -> bool:
        """Remove this consumer from the group when nothing is pending on it (clean exit)."""
        pending = self.r.xpending_range(TELEMETRY_STREAM, TELEMETRY_GROUP, min="-", max="+", count=1,
                                        consumername=self.consumer)
        if pending:
            return False
        self.r.xgroup_delconsumer(TELEMETRY_STREAM, TELEMETRY_GROUP, self.consumer)
        return True
