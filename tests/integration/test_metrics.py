"""The metrics and health HTTP listener of a proxy running in this process, in
front of the real primary + hot standby: what a known workload shows in
/metrics, the health endpoints, and HTTP clients that misbehave."""
import asyncio
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import asyncpg
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from clidash.config import build_proxy_config
from clidash.proxy.http import ListenError
from clidash.proxy.pg.server import PgProxy
from clidash.proxy.stats import LATENCY_BUCKETS_S
from pgcluster import free_port

SERVICE = "metrics-test"
READ = "SELECT count(*) FROM metrics_t WHERE id = {}"
WRITE = "INSERT INTO metrics_t VALUES ({})"
TAGGED = "SELECT 1 /*route='checkout'*/"
N_READS, N_WRITES = 20, 5


def start_config(primary_dsn, replica_dsns, metrics_port, **options):
    return build_proxy_config("postgresql", f"127.0.0.1:{free_port()}", primary_dsn, replica_dsns, SERVICE,
                              "EVENTUAL", metrics_listen=f"127.0.0.1:{metrics_port}", **options)


@pytest.fixture
async def proxy(pg_cluster):
    config = start_config(pg_cluster.primary.dsn, [r.dsn for r in pg_cluster.replicas], free_port())
    server = PgProxy(config)
    await server.start()
    p = pg_cluster.primary
    server.dsn = f"postgresql://{p.user}:{p.password}@127.0.0.1:{config.listen_port}/{p.dbname}"
    server.url = "http://%s:%d" % server.http.address
    yield server
    await server.close()


def _get(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def get(url, method="GET"):
    # The proxy runs on this test's event loop: a blocking client must run in a thread.
    return await asyncio.to_thread(_get, url, method)


def samples(text):
    """{(sample name, frozenset of labels): value} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scrape, name, **labels):
    return scrape.get((name, frozenset(labels.items())))


async def scrape(proxy):
    status, headers, body = await get(proxy.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE_LATEST
    return body.decode()


async def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def create_replicated_table(pg_cluster, name: str) -> None:
    """CREATE TABLE name (id int) on the primary and wait until the standby has it."""
    direct = await asyncpg.connect(pg_cluster.primary.dsn)
    try:
        await direct.execute(f"CREATE TABLE IF NOT EXISTS {name} (id int)")
    finally:
        await direct.close()
    standby = await asyncpg.connect(pg_cluster.replicas[0].dsn)
    try:
        await wait_for(lambda: standby.fetchval(f"SELECT to_regclass('{name}') IS NOT NULL"),
                       what=f"{name} on the standby")
    finally:
        await standby.close()


async def test_a_known_workload_shows_in_metrics(proxy, pg_cluster):
    await create_replicated_table(pg_cluster, "metrics_t")

    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        for i in range(N_READS):
            await conn.execute(READ.format(i))
        for i in range(N_WRITES):
            await conn.execute(WRITE.format(i))
        assert await conn.fetchval(TAGGED) == 1
        text = await scrape(proxy)   # while the connection is open
    finally:
        await conn.close()

    m = samples(text)
    duration = "db_client_operation_duration_seconds"
    base = dict(db_system_name="postgresql", service=SERVICE)
    read_route = proxy.classifier.classify(READ.format(1)).route_id
    write_route = proxy.classifier.classify(WRITE.format(1)).route_id
    assert value(m, duration + "_count", **base, route=read_route, target_role="replica", operation="read") == N_READS
    assert value(m, duration + "_count", **base, route=write_route, target_role="primary", operation="write") == N_WRITES
    assert value(m, duration + "_count", **base, route="checkout", target_role="replica", operation="read") == 1
    assert value(m, duration + "_count", **base, route=read_route, target_role="primary", operation="read") is None

    # Buckets are cumulative, end in +Inf == _count, and use the shared bounds.
    labels = dict(**base, route=read_route, target_role="replica", operation="read")
    buckets = [value(m, duration + "_bucket", **labels, le=le)
               for le in [repr(float(b)) for b in LATENCY_BUCKETS_S] + ["+Inf"]]
    assert None not in buckets
    assert buckets == sorted(buckets) and buckets[-1] == N_READS
    assert 0 < value(m, duration + "_sum", **labels) < N_READS

    routed = "clidash_proxy_routed_total"
    assert value(m, routed, service=SERVICE, route=read_route, target_role="replica", reason="replica") == N_READS
    assert value(m, routed, service=SERVICE, route="checkout", target_role="replica", reason="replica") == 1
    write_reasons = {dict(k[1])["reason"]: v for k, v in m.items()
                     if k[0] == routed and dict(k[1])["route"] == write_route}
    assert sum(write_reasons.values()) == N_WRITES
    assert write_reasons == proxy.stats.histograms[(SERVICE, write_route, "write", "primary")].reasons
    assert value(m, "clidash_proxy_statement_errors_total", service=SERVICE, route=write_route,
                 target_role="primary", operation="write") == 0

    assert value(m, "clidash_proxy_client_connections") == 1
    assert value(m, "clidash_proxy_backend_connections", role="primary") == 1
    assert value(m, "clidash_proxy_backend_connections", role="replica") == 1
    assert value(m, "clidash_proxy_replica_healthy", replica="replica-1") == 1
    assert value(m, "clidash_proxy_policy_version", service=SERVICE) == 0     # no Redis: the --mode
    assert not any(k[0] == "clidash_proxy_policy_age_seconds" for k in m)
    assert value(m, "clidash_proxy_telemetry_dropped_total") == 0

    names = {k[0] for k in m} | {f.name for f in text_string_to_metric_families(text)}
    for name in ("clidash_proxy_fallbacks", "clidash_proxy_errors", "clidash_proxy_route_overflow",
                 "clidash_proxy_hints_ignored", "clidash_proxy_replica_lag_seconds"):
        assert name in names, name   # families present (with or without samples)


async def test_replica_lag_is_exported_once_measured(proxy):
    async def lag_present():
        m = samples(await scrape(proxy))
        return (value(m, "clidash_proxy_replica_lag_seconds", replica="replica-1") is not None
                and value(m, "clidash_proxy_replica_lag_bytes", replica="replica-1") is not None)
    await wait_for(lag_present, what="replica lag in /metrics")
    m = samples(await scrape(proxy))
    assert 0 <= value(m, "clidash_proxy_replica_lag_seconds", replica="replica-1") < 30


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
async def test_promtool_accepts_the_scrape(proxy):
    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        await conn.execute("SELECT 1")
        await conn.execute(TAGGED)
        await conn.execute("SELECT 1 /*route='it''s \\\"quoted\\\"'*/")
    finally:
        await conn.close()
    text = await scrape(proxy)
    result = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=text.encode(),
                                     capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def test_health_endpoints(proxy):
    assert (await get(proxy.url + "/livez"))[::2] == (200, b"ok\n")
    assert (await get(proxy.url + "/startup"))[::2] == (200, b"ok\n")

    async def ready():
        return (await get(proxy.url + "/readyz"))[0] == 200
    await wait_for(ready, timeout=5, what="/readyz")
    status, headers, body = await get(proxy.url + "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert (await get(proxy.url + "/metrics?name=x"))[0] == 200
    assert (await get(proxy.url + "/nope"))[0] == 404
    assert (await get(proxy.url + "/"))[0] == 404
    assert (await get(proxy.url + "/metrics", method="DELETE"))[0] == 405


async def raw_exchange(address, data: bytes, *, read_timeout=5.0) -> bytes:
    """Send bytes, half-close, read until the server closes."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


async def test_bad_http_clients_do_not_hurt_the_proxy(proxy):
    address = proxy.http.address
    for garbage in (b"\x00\xff\xfe garbage \x16\x03\x01\r\n\r\n",            # e.g. a TLS hello
                    b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n",
                    b"GET /metrics HTTP/2.0\r\n\r\n",
                    b"GET metrics HTTP/1.1\r\n\r\n",
                    b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                    b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
                    b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n",
                    b"GET /met",                                             # cut short
                    b"\xff" * 100_000):                                      # no line end at all
        reply = await raw_exchange(address, garbage)
        assert reply == b"" or reply.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ", b"HTTP/1.1 505 ")), \
            (garbage[:40], reply[:80])

    # Two requests on one keep-alive connection, the second closing it.
    reply = await raw_exchange(address, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
                                        b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.count(b"HTTP/1.1 200 OK") == 2 and reply.endswith(b"ok\n")

    # A client that connects and says nothing does not block the others.
    idle = [await asyncio.open_connection(*address) for _ in range(5)]
    try:
        assert (await get(proxy.url + "/livez"))[0] == 200
    finally:
        for _, writer in idle:
            writer.close()

    conn = await asyncpg.connect(proxy.dsn, statement_cache_size=0)
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
    finally:
        await conn.close()
    assert (await get(proxy.url + "/metrics"))[0] == 200


async def test_readyz_reports_an_unreachable_primary():
    dead = free_port()   # nothing listens there
    config = start_config(f"postgresql://u:p@127.0.0.1:{dead}/db", [], free_port())
    proxy = PgProxy(config)
    await proxy.start()
    try:
        url = "http://%s:%d" % proxy.http.address
        assert (await get(url + "/livez"))[0] == 200
        assert (await get(url + "/startup"))[0] == 200
        status, _, body = await get(url + "/readyz")
        assert status == 503 and f"127.0.0.1:{dead}".encode() in body
    finally:
        await proxy.close()


async def test_a_taken_metrics_port_fails_startup_naming_it(pg_cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = start_config(pg_cluster.primary.dsn, [], port)
        proxy = PgProxy(config)
        with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
            await proxy.start()
        with pytest.raises(OSError):   # the SQL listener never opened
            await asyncio.open_connection("127.0.0.1", config.listen_port)
