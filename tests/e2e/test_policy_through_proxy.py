"""The policy plane end to end: a proxy process following Redis, changed with
`clidash policy set` and with plain redis-cli, tags and hints, and Redis outages."""
import json
import subprocess
import sys
import time

import psycopg
import pytest
import redis

import redisserver

pytestmark = pytest.mark.e2e

SERVICE = "psvc"


def where(proxy, sql: str, **connect) -> str:
    """'replica' or 'primary': which server ran sql (its first column must be pg_is_in_recovery())."""
    with psycopg.connect(proxy.dsn(), autocommit=True, **connect) as conn:
        return "replica" if conn.execute(sql).fetchone()[0] else "primary"


def tagged(route: str, **extra) -> str:
    tags = ",".join(f"{k}='{v}'" for k, v in sorted({"route": route, **extra}.items()))
    return f"SELECT pg_is_in_recovery() /*{tags}*/"


def eventually(check, expected, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def cli(*args, redis_url):
    return subprocess.run([sys.executable, "-m", "clidash", "policy", *args, "--redis", redis_url],
                          capture_output=True, text=True, timeout=30)


def test_policy_changes_reach_a_running_proxy(proxy_factory, redis_url):
    proxy = proxy_factory("EVENTUAL", ["--service", SERVICE, "--redis", redis_url])
    assert where(proxy, tagged("r1")) == "replica"

    done = cli("set", SERVICE, "r1", "STRONG", "--reason", "test", redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    assert eventually(lambda: where(proxy, tagged("r1")), "primary") == "primary"
    assert where(proxy, tagged("r2")) == "replica"                      # other routes keep the default

    # The same change with plain redis-cli: HSET, bump _version, PUBLISH the hint.
    r = redis.Redis.from_url(redis_url)
    r.hset(f"clidash:policy:{SERVICE}", "r2", json.dumps({"mode": "STRONG", "source": "redis-cli"}))
    version = r.hincrby(f"clidash:policy:{SERVICE}", "_version", 1)
    r.publish("clidash:policy-changed", json.dumps({"service": SERVICE, "version": version}))
    assert eventually(lambda: where(proxy, tagged("r2")), "primary") == "primary"

    proxies = r.hgetall("clidash:proxies")
    assert any(json.loads(v)["service"] == SERVICE for v in proxies.values())


def test_hints_only_ever_strengthen(proxy_factory, redis_url):
    proxy = proxy_factory("EVENTUAL", ["--service", SERVICE, "--redis", redis_url])
    assert cli("set", SERVICE, "strict", "STRONG", redis_url=redis_url).returncode == 0
    assert where(proxy, tagged("loose", clidash_consistency="STRONG")) == "primary"
    assert eventually(lambda: where(proxy, tagged("strict", clidash_consistency="EVENTUAL")), "primary") \
        == "primary"                                                      # weaker hint ignored
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        assert conn.execute(tagged("loose")).fetchone()[0] is True
        conn.execute("SET clidash.consistency = 'STRONG'")
        assert conn.execute(tagged("loose")).fetchone()[0] is False
        conn.execute("RESET clidash.consistency")
        assert conn.execute(tagged("loose")).fetchone()[0] is True
    assert where(proxy, tagged("loose"), options="-c clidash.consistency=STRONG") == "primary"


def test_fail_static_then_default_then_catch_up(proxy_factory):
    server = redisserver.start_local_redis()
    try:
        proxy = proxy_factory("EVENTUAL", ["--service", SERVICE, "--redis", server.url, "--policy-ttl", "2"])
        r = redis.Redis.from_url(server.url)
        assert cli("set", SERVICE, "r1", "STRONG", redis_url=server.url).returncode == 0
        assert eventually(lambda: where(proxy, tagged("r1")), "primary") == "primary"
        port = server.port
        server.stop()
        time.sleep(0.5)
        assert where(proxy, tagged("r1")) == "primary"                    # last policy kept (fail static)
        assert eventually(lambda: where(proxy, tagged("r1")), "replica", timeout=5) == "replica"  # TTL: default
        server = redisserver.start_local_redis(port=port)                 # an empty Redis comes back
        r = redis.Redis.from_url(server.url)
        assert cli("set", SERVICE, "r1", "STRONG", redis_url=server.url).returncode == 0
        assert eventually(lambda: where(proxy, tagged("r1")), "primary", timeout=5) == "primary"
    finally:
        server.stop()


def test_proxy_started_while_redis_is_down_serves_its_default(proxy_factory):
    port = redisserver.free_port()
    proxy = proxy_factory("STRONG", ["--service", SERVICE, "--redis", f"redis://127.0.0.1:{port}/0"])
    assert where(proxy, tagged("r1")) == "primary"
    proxy2 = proxy_factory("EVENTUAL", ["--service", SERVICE, "--redis", f"redis://127.0.0.1:{port}/0"])
    assert where(proxy2, tagged("r1")) == "replica"


def test_cli_errors_are_clear(redis_url):
    bad = cli("set", SERVICE, "r1", "SOMETIMES", redis_url=redis_url)
    assert bad.returncode != 0 and "unknown consistency mode" in (bad.stderr + bad.stdout)
    assert "Traceback" not in bad.stderr
    down = cli("list", redis_url="redis://127.0.0.1:1/0")
    assert down.returncode != 0 and "Traceback" not in down.stderr
