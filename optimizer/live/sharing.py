"""How several optimizer processes share one telemetry stream and still decide each
service's window exactly once, from all of its records.

The consumer group hands each stream entry to ONE process, so a service's window
is spread over processes. Windows are aligned to the wall clock (window k covers
[k*W, (k+1)*W); a record belongs to the window holding its midpoint), and:

  clidash:optimizer:partial:<service>:<k>   HASH  field = consumer, value = that
        process's ServiceWindow JSON for (service, k) so far; field `_sealed` =
        the consumer that decided it. PEXPIRE a few windows.
  clidash:optimizer:owner:<service>         STRING the consumer that decides the
        service (SET NX PX 3 windows; the holder renews it every window).

- Every batch a process reads is folded into its partials, and each partial is
  written together with the XACK of exactly the entries it absorbed, in one Lua
  script (`flush`) that refuses once the window is sealed, and refuses entries no
  longer pending on this consumer (XAUTOCLAIMed by another while this one
  stalled). A batch refused for the seal is folded into a later window instead;
  claimed-away entries are dropped here (the claimer counts them). So an entry is
  counted once, and acknowledged only once it is in Redis: a crash loses nothing
  (the entries stay pending and another process XAUTOCLAIMs them).
- The owner, `settle_s` after window k ends, seals it (HSETNX `_sealed`) and reads
  every partial in the same MULTI (`seal_and_read`): nothing can be added after
  the read, and of two processes that both believe they own the service (a lease
  that expired under a stalled holder) only the one whose HSETNX won decides.

Single Redis (or a cluster with all of these keys and the stream in one slot):
the flush script touches the partial hash and the telemetry stream.
"""
from __future__ import annotations

import redis

from clidash.redis_keys import TELEMETRY_GROUP, TELEMETRY_STREAM, optimizer_owner_key, optimizer_partial_key

SEALED_FIELD = "_sealed"

# KEYS: partial hash, telemetry stream. ARGV: consumer, partial JSON, ttl ms, group, entry ids...
# Returns 1 (stored and acknowledged), 0 (window sealed: nothing done), or the ids that are
# no longer pending on this consumer (another one claimed them while we stalled: nothing done).
_FLUSH = """
local lost = {}
for i = 5, #ARGV do
  if #redis.call('XPENDING', KEYS[2], ARGV[4], ARGV[i], ARGV[i], 1, ARGV[1]) == 0 then
    lost[#lost + 1] = ARGV[i]
  end
end
if #lost > 0 then return lost end
if redis.call('HEXISTS', KEYS[1], '_sealed') == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if #ARGV > 4 then redis.call('XACK', KEYS[2], ARGV[4], unpack(ARGV, 5)) end
return 1
"""

# KEYS: owner key. ARGV: consumer, lease ms. Renew only a lease we hold.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

MAX_IDS_PER_FLUSH = 4000        # below Lua's unpack() limit


class Sharing:
    """The partial-window and lease operations of one optimizer process (consumer)."""

    def __init__(self, r: redis.Redis, consumer: str, *, partial_ttl_ms: int, lease_ms: int):
        self.r = r
        self.consumer = consumer
        self.partial_ttl_ms = partial_ttl_ms
        self.lease_ms = lease_ms
        self._flush = r.register_script(_FLUSH)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    # -- partial windows

    def flush(self, service: str, window: int, partial_json: str, entry_ids: list[str]) -> bool | list[str]:
        """Store this process's partial for (service, window) and XACK `entry_ids`, atomically.

        True when done; False when the window is already sealed; a list of ids when some
        entries are no longer pending on this consumer (claimed by another while this
        process stalled): then nothing is written and the caller folds again without them."""
        key = optimizer_partial_key(service, window)
        if len(entry_ids) > MAX_IDS_PER_FLUSH:
            raise ValueError(f"at most {MAX_IDS_PER_FLUSH} entries per flush")
        done = self._flush(keys=[key, TELEMETRY_STREAM],
                           args=[self.consumer, partial_json, self.partial_ttl_ms, TELEMETRY_GROUP, *entry_ids])
        return list(done) if isinstance(done, list) else bool(done)

    def seal_and_read(self, service: str, window: int) -> list[str] | None:
        """Seal (service, window) and return every process's partial JSON; None when another
        process sealed it first (that one decides the window)."""
        key = optimizer_partial_key(service, window)
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(key, SEALED_FIELD, self.consumer)
        pipe.hgetall(key)
        pipe.pexpire(key, self.partial_ttl_ms)
        won, fields, _ = pipe.execute()
        # Sealed by us before (a Redis error cut the decision short): ours to decide still.
        if not won and fields.get(SEALED_FIELD) != self.consumer:
            return None
        return [value for name, value in fields.items() if not name.startswith("_")]

    # -- per-service leases

    def try_acquire(self, service: str) -> bool:
        return bool(self.r.set(optimizer_owner_key(service), self.consumer, nx=True, px=self.lease_ms))

    def renew(self, service: str) -> bool:
        return bool(self._renew(keys=[optimizer_owner_key(service)], args=[self.consumer, self.lease_ms]))

    def release(self, service: str) -> None:
        self._release(keys=[optimizer_owner_key(service)], args=[self.consumer])

    def owner(self, service: str) -> str | None:
        return self.r.get(optimizer_owner_key(service))
