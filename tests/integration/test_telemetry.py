"""Telemetry windows (clidash:telemetry) and UDP application events of a proxy
running in this process, in front of the real primary + hot standby, with the
test Redis; and a Redis that does not answer, which must cost no query time."""
import asyncio
import json
import socket
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from clidash.config import build_proxy_config
from clidash.proxy.pg.server import PgProxy
from clidash.redis_keys import TELEMETRY_STREAM
from pgcluster import free_port
from test_metrics import create_replicated_table, get, samples, value, wait_for

SERVICE = "telemetry-test"
READ = "SELECT count(*) FROM telemetry_t WHERE id = {}"
WRITE = "INSERT INTO telemetry_t VALUES ({})"
N_READS, N_WRITES = 20, 5
WINDOW_S = 0.3
RECORD_KEYS = {"proxy", "service", "protocol", "window_start", "window_s", "policy_version", "replicas", "routes"}
ROUTE_KEYS = {"route", "mode", "reads_primary", "reads_replica", "writes", "errors", "fallbacks",
              "latency_buckets_s", "read_primary_hist", "read_replica_hist", "write_hist",
              "ryw_exposed_reads", "stale_audited", "stale_found"}


async def start_proxy(pg_cluster, redis_url):
    config = build_proxy_config("postgresql", f"127.0.0.1:{free_port()}", pg_cluster.primary.dsn,
                                [r.dsn for r in pg_cluster.replicas], SERVICE, "EVENTUAL",
                                redis_url=redis_url, metrics_listen=f"127.0.0.1:{free_port()}",
                                telemetry_window_s=WINDOW_S, udp_listen="127.0.0.1:0")
    server = PgProxy(config)
    await server.start()
    p = pg_cluster.primary
    server.dsn = f"postgresql://{p.user}:{p.password}@127.0.0.1:{config.listen_port}/{p.dbname}"
    server.url = "http://%s:%d" % server.http.address
    return server


@pytest.fixture
async def proxy(pg_cluster, redis_url):
    server = await start_proxy(pg_cluster, redis_url)
    server.redis_url = redis_url
    yield server
    await server.close()


async def read_records(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(TELEMETRY_STREAM)
    finally:
        await client.aclose()
    return [json.loads(fields[b"record"]) for _id, fields in entries]


def route_totals(records, service, route):
    totals = {}
    for rec in records:
        if rec["service"] != service:
            continue
        for r in rec["routes"]:
            if r["route"] == route:
                for k, v in r.items():
                    if isinstance(v, int) and not isinstance(v, bool):
                        totals[k] = totals.get(k, 0) + v
    return totals


async def test_a_known_workload_adds_up_in_the_telemetry_stream(proxy, pg_cluster):
    await create_replicated_table(pg_cluster, "telemetry_t")
    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        for i in range(N_READS):
            await conn.execute(READ.format(i))
        for i in range(N_WRITES):
            await conn.execute(WRITE.format(i))
    finally:
        await conn.close()
    await asyncio.sleep(2.5 * WINDOW_S)

    records = await read_records(proxy.redis_url)
    assert records and proxy.telemetry.dropped == 0
    for rec in records:
        assert set(rec) == RECORD_KEYS
        assert rec["protocol"] == "postgresql" and rec["window_s"] == WINDOW_S
        assert rec["replicas"][0]["name"] == "replica-1"
        for r in rec["routes"]:
            assert ROUTE_KEYS <= set(r)
    read_route = proxy.classifier.classify(READ.format(1)).route_id
    write_route = proxy.classifier.classify(WRITE.format(1)).route_id
    reads = route_totals(records, SERVICE, read_route)
    writes = route_totals(records, SERVICE, write_route)
    assert (reads["reads_replica"], reads["reads_primary"], reads["writes"]) == (N_READS, 0, 0)
    assert (writes["writes"], writes["reads_replica"], writes["reads_primary"]) == (N_WRITES, 0, 0)
    read_rec = next(r for rec in records for r in rec["routes"] if r["route"] == read_route)
    assert read_rec["mode"] == "EVENTUAL"
    assert sum(sum(r["read_replica_hist"]) for rec in records for r in rec["routes"]
               if r["route"] == read_route) == N_READS


async def test_udp_events_show_in_telemetry_and_metrics_and_garbage_is_counted(proxy):
    host, port = proxy.udp.address
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for ms in (45, 45, 120):
            sock.sendto(json.dumps({"svc": "payments", "op": "checkout", "latency": ms}).encode(), (host, port))
        for junk in (b"{nope", b'{"svc": "payments", "op": "checkout", "latency": -3}',
                     b'{"svc": "payments", "op": 7, "latency": 1}', b"x" * 3000):
            sock.sendto(junk, (host, port))
    finally:
        sock.close()
    await wait_for(lambda: _dropped_at_least(proxy, 4), timeout=5, what="garbage counted")

    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)   # still serving SQL
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await conn.close()
    await asyncio.sleep(2.5 * WINDOW_S)

    records = await read_records(proxy.redis_url)
    app = route_totals(records, "payments", "checkout")
    assert app["app_events"] == 3
    status, _, body = await get(proxy.url + "/metrics")
    m = samples(body.decode())
    name = "clidash_app_operation_duration_seconds"
    assert value(m, name + "_count", service="payments", operation="checkout") == 3
    assert value(m, name + "_bucket", service="payments", operation="checkout", le="0.05") == 2
    for reason in ("bad_json", "negative_latency", "bad_field", "oversized"):
        assert value(m, "clidash_proxy_udp_dropped_total", reason=reason) == 1, reason
    assert value(m, "clidash_proxy_telemetry_dropped_total") == 0


async def _dropped_at_least(proxy, n):
    return sum(proxy.udp.stats.dropped.values()) >= n


async def blackhole_server():
    """A "Redis" that accepts connections and never answers."""
    held = []

    async def swallow(reader, writer):
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, held


@pytest.mark.parametrize("redis_state", ["hangs", "refuses"])
async def test_a_redis_that_does_not_answer_drops_windows_not_queries(pg_cluster, redis_state):
    server, held = await blackhole_server()
    port = server.sockets[0].getsockname()[1]
    if redis_state == "refuses":
        server.close()
        await server.wait_closed()
    proxy = await start_proxy(pg_cluster, f"redis://127.0.0.1:{port}/0")
    try:
        conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
        try:
            slowest = 0.0
            end = time.monotonic() + 3 * WINDOW_S   # spread over windows whose XADD hangs
            n = 0
            while n < 50 or time.monotonic() < end:
                t0 = time.perf_counter()
                assert await conn.fetchval("SELECT 1") == 1
                slowest = max(slowest, time.perf_counter() - t0)
                n += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()
        await asyncio.sleep(2 * WINDOW_S)
        assert proxy.telemetry.dropped > 0
        assert slowest < 0.1, f"a query took {slowest * 1000:.0f} ms while Redis hung"
        status, _, body = await get(proxy.url + "/metrics")
        assert value(samples(body.decode()), "clidash_proxy_telemetry_dropped_total") >= 1
    finally:
        await proxy.close()
        for w in held:
            w.close()
        server.close()
