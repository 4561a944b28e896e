"""Policy propagation latency: from a write to Redis to a running PolicyWatcher serving it.

Prints figures, never pass/fail. Starts its own throwaway Redis (deploy/local/redisserver.py)
unless --redis URL is given (that Redis gets keys under clidash:policy:bench-propagation).

Three paths, each timed from just before the write is sent until `watcher.mode_for(route)`
returns the new mode (the observer polls it from the watcher's own event loop):

  hint   HSET + HINCRBY _version + PUBLISH in one MULTI, as redis-cli or any writer would
  store  clidash.policy_store.set_route_policy (WATCH/MULTI, decisions entry, PUBLISH), what the
         CLI and the optimizer call; run in a worker thread as a separate client would be
  poll   HSET + HINCRBY without PUBLISH: only the `_version` poll finds it (the safety net)

plus the hot-path cost of `mode_for` itself.

    python bench/policy_propagation.py [--updates 200] [--poll-samples 20] [--poll-interval 1.0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import timeit
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))

import redisserver  # noqa: E402

import redis.asyncio as aioredis  # noqa: E402

from clidash.policy import ModeSpec, RoutePolicy  # noqa: E402
from clidash.policy_store import connect, set_route_policy  # noqa: E402
from clidash.proxy.policy_watcher import PolicyWatcher  # noqa: E402
from clidash.proxy.run import install_event_loop_policy  # noqa: E402
from clidash.redis_keys import POLICY_CHANGED, policy_key, redact_url  # noqa: E402

SERVICE = "bench-propagation"
ROUTE = "product_page"
TIMEOUT_S = 10.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(name: str, samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return (f"{name:<6} n={len(ms):<4} p50={percentile(ms, 50):8.3f} ms  p99={percentile(ms, 99):8.3f} ms  "
            f"max={max(ms):8.3f} ms  mean={statistics.fmean(ms):8.3f} ms")


async def wait_applied(watcher: PolicyWatcher, expected: ModeSpec, started: float) -> float:
    while watcher.mode_for(ROUTE) != expected:
        if time.perf_counter() - started > TIMEOUT_S:
            raise SystemExit(f"update to {expected} did not arrive within {TIMEOUT_S}s")
        await asyncio.sleep(0)
    return time.perf_counter() - started


async def raw_update(writer, lag: int, publish: bool) -> None:
    value = RoutePolicy(ModeSpec.parse(f"BOUNDED:{lag}"), source="bench", reason="propagation").to_json()
    pipe = writer.pipeline(transaction=True)
    pipe.hset(policy_key(SERVICE), ROUTE, value)
    pipe.hincrby(policy_key(SERVICE), "_version", 1)
    version = (await pipe.execute())[1]
    if publish:
        await writer.publish(POLICY_CHANGED, json.dumps({"service": SERVICE, "version": version}))


async def measure(url: str, updates: int, poll_samples: int, poll_interval: float, loop_name: str) -> None:
    writer = aioredis.Redis.from_url(url, decode_responses=True)
    sync_client = connect(url)
    await writer.delete(policy_key(SERVICE))
    watcher = PolicyWatcher(url, SERVICE, ModeSpec.parse("STRONG"), "bench-proxy", poll_interval_s=poll_interval)
    await watcher.start()
    lag = 0
    try:
        results = {}
        for _ in range(20):  # warm-up: connections, caches
            lag += 1
            started = time.perf_counter()
            await raw_update(writer, lag, publish=True)
            await wait_applied(watcher, ModeSpec.parse(f"BOUNDED:{lag}"), started)

        samples = []
        for _ in range(updates):
            lag += 1
            started = time.perf_counter()
            await raw_update(writer, lag, publish=True)
            samples.append(await wait_applied(watcher, ModeSpec.parse(f"BOUNDED:{lag}"), started))
        results["hint"] = samples

        samples = []
        for _ in range(updates):
            lag += 1
            spec = ModeSpec.parse(f"BOUNDED:{lag}")
            started = time.perf_counter()
            write = asyncio.ensure_future(asyncio.to_thread(
                set_route_policy, sync_client, SERVICE, ROUTE, RoutePolicy(spec, source="bench")))
            samples.append(await wait_applied(watcher, spec, started))
            await write
        results["store"] = samples

        samples = []
        for _ in range(poll_samples):
            lag += 1
            started = time.perf_counter()
            await raw_update(writer, lag, publish=False)
            samples.append(await wait_applied(watcher, ModeSpec.parse(f"BOUNDED:{lag}"), started))
            await asyncio.sleep(random.uniform(0, poll_interval))  # a random phase against the poll
        if samples:
            results["poll"] = samples
    finally:
        await watcher.close()
        await writer.delete(policy_key(SERVICE))
        await writer.aclose()
        sync_client.close()

    calls = 1_000_000
    per_call_ns = min(timeit.repeat(lambda: watcher.mode_for(ROUTE), number=calls, repeat=3)) / calls * 1e9
    print(f"policy propagation: Redis {redact_url(url)}, event loop {loop_name}, watcher poll {poll_interval:g}s")
    for name, samples in results.items():
        print(summary(name, samples))
    print(f"mode_for hot path: {per_call_ns:.0f} ns per call (includes the lambda call)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--poll-samples", type=int, default=20, help="0 skips the poll-only path")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    loop_name = install_event_loop_policy()
    server = None
    url = args.redis
    if url is None:
        server = redisserver.start_local_redis()
        url = server.url
    try:
        asyncio.run(measure(url, args.updates, args.poll_samples, args.poll_interval, loop_name))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
