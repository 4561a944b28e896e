"""The policy plane against a real Redis: store functions, the CLI (in-process and as a
subprocess), raw redis-cli writes reaching a running PolicyWatcher, fail-static and
recovery across a Redis restart, floors, and the clidash:proxies report."""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis
from click.testing import CliRunner

import redisserver
from clidash.cli import main as cli_main
from clidash.policy import ModeSpec, PolicyError, RoutePolicy
from clidash.policy_store import (PolicyStoreError, clear_floor, connect, delete_route_policy, history,
                                  list_services, read_floors, read_policy, set_floor, set_route_policy)
from clidash.proxy.policy_watcher import PolicyWatcher
from clidash.redis_keys import DECISIONS_STREAM, POLICY_CHANGED, PROXIES_KEY, floor_key, policy_key

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
PROPAGATION_S = 1.0


def spec(text: str) -> ModeSpec:
    return ModeSpec.parse(text)


@pytest.fixture
def r(redis_url):
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def own_redis():
    """A Redis this test may stop and restart (never the session one)."""
    server = redisserver.start_local_redis()
    yield server
    server.stop()


async def eventually(check, timeout: float = PROPAGATION_S, what: str = "condition") -> float:
    """Await until check() is truthy; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def redis_cli(url: str, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-u", url, *args], capture_output=True, text=True, timeout=10, check=True)
    return out.stdout.strip()


def clidash(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIDASH_REDIS_URL": url}
    return subprocess.run([sys.executable, "-m", "clidash", "policy", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=30)


# --------------------------------------------------------------------------- store


def test_set_and_read_back(r):
    p = RoutePolicy(spec("BOUNDED:250"), source="optimizer", reason="lag ok", updated_at="2025-12-04T10:15:30.123Z")
    pubsub = r.pubsub()
    pubsub.subscribe(POLICY_CHANGED)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"

    assert set_route_policy(r, "catalog", "product_page", p, extra={"reward": 0.5, "model_version": "m3"}) == 1
    assert set_route_policy(r, "catalog", "*", RoutePolicy(spec("EVENTUAL"))) == 2

    assert r.hget(policy_key("catalog"), "product_page") == (
        '{"mode":"BOUNDED","max_lag_ms":250,"source":"optimizer","reason":"lag ok",'
        '"updated_at":"2025-12-04T10:15:30.123Z"}')
    stored = read_policy(r, "catalog")
    assert stored.version == 2 and stored.routes["product_page"] == p
    assert stored.mode_for("anything") == spec("EVENTUAL")

    hints = [json.loads(pubsub.get_message(timeout=1)["data"]) for _ in range(2)]
    assert hints == [{"service": "catalog", "version": 1}, {"service": "catalog", "version": 2}]
    pubsub.close()

    entries = r.xrange(DECISIONS_STREAM)
    assert [e[1]["route"] for e in entries] == ["product_page", "*"]
    first = entries[0][1]
    assert first == {"service": "catalog", "route": "product_page", "from": "", "to": "BOUNDED:250",
                     "reason": "lag ok", "source": "optimizer", "at": "2025-12-04T10:15:30.123Z", "version": "1",
                     "reward": "0.5", "model_version": "m3"}


def test_changes_are_logged_with_from_and_history_filters_by_service(r):
    for mode in ("EVENTUAL", "BOUNDED:100", "STRONG"):
        set_route_policy(r, "catalog", "feed", RoutePolicy(spec(mode), reason=f"to {mode}"))
    set_route_policy(r, "billing", "feed", RoutePolicy(spec("STRONG")))
    assert delete_route_policy(r, "catalog", "feed", reason="gone") == 4
    assert delete_route_policy(r, "catalog", "feed") is None
    got = history(r, "catalog", 10)
    assert [(d.from_mode, d.to_mode) for d in got] == [
        ("STRONG", ""), ("BOUNDED:100", "STRONG"), ("EVENTUAL", "BOUNDED:100"), ("", "EVENTUAL")]
    assert [d.reason for d in history(r, "catalog", 2)] == ["gone", "to STRONG"]
    assert [d.service for d in history(r, "billing", 10)] == ["billing"]


def test_floors_refuse_weaker_policies(r):
    assert set_floor(r, "catalog", "checkout", spec("READ_YOUR_WRITES")) == 1
    assert set_floor(r, "catalog", "*", spec("BOUNDED:1000")) == 2
    with pytest.raises(PolicyError, match="weaker than the floor READ_YOUR_WRITES"):
        set_route_policy(r, "catalog", "checkout", RoutePolicy(spec("BOUNDED:10")))
    with pytest.raises(PolicyError, match=r"weaker than the floor BOUNDED:1000"):
        set_route_policy(r, "catalog", "*", RoutePolicy(spec("EVENTUAL")))
    with pytest.raises(PolicyError, match=r"weaker than the floor BOUNDED:1000"):
        set_route_policy(r, "catalog", "browse", RoutePolicy(spec("BOUNDED:2000")))
    set_route_policy(r, "catalog", "checkout", RoutePolicy(spec("STRONG")))
    set_route_policy(r, "catalog", "browse", RoutePolicy(spec("BOUNDED:1000")))
    assert read_floors(r, "catalog") == {"checkout": spec("READ_YOUR_WRITES"), "*": spec("BOUNDED:1000")}
    assert r.hget(floor_key("catalog"), "checkout") == "READ_YOUR_WRITES"
    assert clear_floor(r, "catalog", "checkout") is True
    assert clear_floor(r, "catalog", "checkout") is False
    assert read_policy(r, "catalog").version == 5
    assert [(s.service, s.version, s.routes, s.floors) for s in list_services(r)] == [("catalog", 5, 2, 1)]


def test_store_rejects_bad_names_and_reports_unreachable_redis(r):
    with pytest.raises(PolicyError, match="_version"):
        set_route_policy(r, "catalog", "_version", RoutePolicy(spec("STRONG")))
    with pytest.raises(PolicyError, match="service name"):
        read_policy(r, "")
    dead = connect(f"redis://127.0.0.1:{redisserver.free_port()}/0", timeout_s=1)
    with pytest.raises(PolicyStoreError, match="cannot reach Redis at redis://127.0.0.1:"):
        read_policy(dead, "catalog")


# --------------------------------------------------------------------------- CLI


def assert_operator_json(raw: str, mode: str, extra: str, reason: str) -> None:
    assert re.fullmatch(rf'\{{"mode":"{mode}"{extra},"source":"operator","reason":"{reason}",'
                        rf'"updated_at":"{STAMP}"\}}', raw), raw


def test_cli_set_get_in_process(r, redis_url):
    runner = CliRunner()
    out = runner.invoke(cli_main, ["policy", "set", "catalog", "product_page", "BOUNDED:250", "--reason", "why",
                                   "--redis", redis_url])
    assert out.exit_code == 0, out.output
    assert "policy version 1" in out.output
    assert_operator_json(r.hget(policy_key("catalog"), "product_page"), "BOUNDED", ',"max_lag_ms":250', "why")
    assert r.hget(policy_key("catalog"), "_version") == "1"
    assert r.xlen(DECISIONS_STREAM) == 1

    out = runner.invoke(cli_main, ["policy", "get", "catalog", "--json", "--redis", redis_url])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["version"] == 1 and data["routes"]["product_page"]["max_lag_ms"] == 250


def test_cli_as_subprocess(r, redis_url):
    done = clidash(redis_url, "set", "catalog", "*", "EVENTUAL", "--reason", "pages tolerate staleness")
    assert done.returncode == 0, done.stderr
    assert_operator_json(r.hget(policy_key("catalog"), "*"), "EVENTUAL", "", "pages tolerate staleness")
    assert clidash(redis_url, "set", "catalog", "cart", "read_your_writes").returncode == 0
    assert clidash(redis_url, "floor", "catalog", "cart", "READ_YOUR_WRITES").returncode == 0
    assert r.hget(policy_key("catalog"), "_version") == "3"
    assert r.xlen(DECISIONS_STREAM) == 2

    got = clidash(redis_url, "get", "catalog")
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == "catalog: policy version 3"
    assert lines[1].split() == ["ROUTE", "MODE", "MAX_LAG_MS", "SOURCE", "REASON", "UPDATED_AT", "FLOOR"]
    assert lines[2].split()[:3] == ["*", "EVENTUAL", "operator"]
    assert lines[3].split()[:3] == ["cart", "READ_YOUR_WRITES", "operator"]
    assert lines[3].split()[-1] == "READ_YOUR_WRITES"

    listed = json.loads(clidash(redis_url, "list", "--json").stdout)
    assert listed == [{"service": "catalog", "version": 3, "routes": 2, "floors": 1}]
    hist = json.loads(clidash(redis_url, "history", "catalog", "--json", "--count", "1").stdout)
    assert [(h["route"], h["to"]) for h in hist] == [("cart", "READ_YOUR_WRITES")]

    refused = clidash(redis_url, "set", "catalog", "cart", "EVENTUAL")
    assert refused.returncode == 1
    assert "weaker than the floor READ_YOUR_WRITES" in refused.stderr and "Traceback" not in refused.stderr
    assert json.loads(r.hget(policy_key("catalog"), "cart"))["mode"] == "READ_YOUR_WRITES"


@pytest.mark.parametrize("args, code, message", [
    (("set", "catalog", "x", "SOMETIMES"), 2, "unknown consistency mode 'SOMETIMES'"),
    (("set", "catalog", "x", "BOUNDED"), 2, "BOUNDED needs a lag bound"),
    (("get", "nosuch"), 1, "no policy is stored for service 'nosuch'"),
    (("history", "nosuch"), 1, "no policy is stored for service 'nosuch'"),
    (("floor", "catalog", "x"), 2, "give a MODE"),
    (("floor", "catalog", "x", "--clear"), 1, "has no floor"),
    (("unset", "catalog", "x"), 1, "no policy is stored for catalog x"),
])
def test_cli_errors_are_one_line(redis_url, args, code, message):
    out = CliRunner().invoke(cli_main, ["policy", *args, "--redis", redis_url])
    assert out.exit_code == code, out.output
    assert message in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_cli_unreachable_redis(redis_url):
    dead = f"redis://127.0.0.1:{redisserver.free_port()}/0"
    done = clidash(dead, "list")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: cannot reach Redis at redis://127.0.0.1:")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- watcher


async def test_raw_redis_cli_change_reaches_a_running_watcher(redis_url):
    # A long poll interval: only the pub/sub hint can deliver the change in time.
    watcher = PolicyWatcher(redis_url, "svc", spec("STRONG"), "proxy-a", poll_interval_s=30)
    await watcher.start()
    try:
        assert watcher.state == "live" and watcher.version == 0
        assert watcher.mode_for("route") == spec("STRONG")
        redis_cli(redis_url, "HSET", policy_key("svc"), "route",
                  '{"mode":"BOUNDED","max_lag_ms":250,"source":"operator","reason":"by hand",'
                  '"updated_at":"2025-12-04T10:15:30Z"}')
        version = int(redis_cli(redis_url, "HINCRBY", policy_key("svc"), "_version", "1"))
        redis_cli(redis_url, "PUBLISH", POLICY_CHANGED, json.dumps({"service": "svc", "version": version}))
        await eventually(lambda: watcher.mode_for("route") == spec("BOUNDED:250"), what="raw change applied")
        assert watcher.version == version == 1
        assert watcher.mode_for("other") == spec("STRONG")  # no `*`: the configured default
        assert watcher.age_s < 1.0
    finally:
        await watcher.close()


async def test_store_change_reaches_watcher_and_other_services_are_ignored(redis_url, r):
    watcher = PolicyWatcher(redis_url, "svc", spec("STRONG"), "proxy-a", poll_interval_s=30)
    await watcher.start()
    try:
        set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
        await eventually(lambda: watcher.mode_for("x") == spec("EVENTUAL"))
        set_route_policy(r, "other", "*", RoutePolicy(spec("READ_YOUR_WRITES")))
        set_route_policy(r, "svc", "y", RoutePolicy(spec("BOUNDED:5")))
        await eventually(lambda: watcher.version == 2)
        assert watcher.mode_for("x") == spec("EVENTUAL") and watcher.mode_for("y") == spec("BOUNDED:5")
    finally:
        await watcher.close()


async def test_poll_catches_a_change_without_a_hint(redis_url):
    watcher = PolicyWatcher(redis_url, "svc", spec("STRONG"), "proxy-a", poll_interval_s=0.2)
    await watcher.start()
    try:
        redis_cli(redis_url, "HSET", policy_key("svc"), "*", '{"mode":"EVENTUAL"}')
        redis_cli(redis_url, "HINCRBY", policy_key("svc"), "_version", "1")
        await eventually(lambda: watcher.mode_for("any") == spec("EVENTUAL"), what="polled change")
        # A flushed Redis (version back to 0) is followed too: nothing stored -> the default.
        redis_cli(redis_url, "FLUSHALL")
        await eventually(lambda: watcher.mode_for("any") == spec("STRONG"), what="reset followed")
        assert watcher.version == 0 and watcher.state == "live"
    finally:
        await watcher.close()


async def test_floors_are_never_undercut(redis_url, r):
    set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
    set_route_policy(r, "svc", "cart", RoutePolicy(spec("EVENTUAL")))
    watcher = PolicyWatcher(redis_url, "svc", spec("EVENTUAL"), "proxy-a", poll_interval_s=30)
    await watcher.start()
    try:
        assert watcher.mode_for("cart") == spec("EVENTUAL")
        set_floor(r, "svc", "cart", spec("READ_YOUR_WRITES"))
        await eventually(lambda: watcher.mode_for("cart") == spec("READ_YOUR_WRITES"), what="floor applied")
        set_floor(r, "svc", "*", spec("BOUNDED:100"))
        await eventually(lambda: watcher.mode_for("browse") == spec("BOUNDED:100"), what="* floor applied")
        assert watcher.mode_for("cart") == spec("READ_YOUR_WRITES")
        # A floor written by hand (no version bump) still wins: it is raised, even if the policy says less.
        redis_cli(redis_url, "HSET", policy_key("svc"), "cart", '{"mode":"EVENTUAL"}')
        assert watcher.mode_for("cart") == spec("READ_YOUR_WRITES")
    finally:
        await watcher.close()


async def test_proxies_hash_holds_the_watcher_entry(redis_url, r):
    set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
    watcher = PolicyWatcher(redis_url, "svc", spec("STRONG"), "svc-proxy-1", poll_interval_s=0.2)
    await watcher.start()
    try:
        entry = json.loads(r.hget(PROXIES_KEY, "svc-proxy-1"))
        assert entry["service"] == "svc" and entry["policy_version"] == 1
        assert re.fullmatch(STAMP, entry["last_seen"])
        set_route_policy(r, "svc", "*", RoutePolicy(spec("STRONG")))
        await eventually(lambda: json.loads(r.hget(PROXIES_KEY, "svc-proxy-1"))["policy_version"] == 2,
                         what="reported version")
        first_seen = json.loads(r.hget(PROXIES_KEY, "svc-proxy-1"))["last_seen"]
        await eventually(lambda: json.loads(r.hget(PROXIES_KEY, "svc-proxy-1"))["last_seen"] != first_seen,
                         timeout=2, what="last_seen refresh")
    finally:
        await watcher.close()
    assert r.hget(PROXIES_KEY, "svc-proxy-1") is None  # a clean close withdraws the entry


async def test_fail_static_then_default_then_recovery_on_restart(own_redis, caplog):
    url, port = own_redis.url, own_redis.port
    with redis.Redis.from_url(url, decode_responses=True) as r:
        set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
        set_route_policy(r, "svc", "cart", RoutePolicy(spec("BOUNDED:50")))
    watcher = PolicyWatcher(url, "svc", spec("STRONG"), "proxy-a", fail_static_ttl_s=1.5, poll_interval_s=0.1)
    await watcher.start()
    try:
        assert watcher.state == "live" and watcher.mode_for("cart") == spec("BOUNDED:50")
        own_redis.stop()
        await eventually(lambda: watcher.state == "stale", what="stale after the outage")
        assert watcher.mode_for("cart") == spec("BOUNDED:50") and watcher.mode_for("x") == spec("EVENTUAL")
        assert watcher.version == 2
        took = await eventually(lambda: watcher.state == "default", timeout=3, what="default after the TTL")
        assert 0.8 < took < 2.0
        assert watcher.mode_for("cart") == spec("STRONG") and watcher.mode_for("x") == spec("STRONG")
        assert watcher.version == 0 and watcher.age_s > 1.5
        await asyncio.sleep(1.0)  # retries while down: logged once, not per attempt
        outage_lines = [rec for rec in caplog.records if "unavailable" in rec.getMessage()]
        assert len(outage_lines) == 1

        restarted = redisserver.start_local_redis(port=port)
        try:
            with redis.Redis.from_url(url, decode_responses=True) as r:
                set_route_policy(r, "svc", "*", RoutePolicy(spec("READ_YOUR_WRITES")))
            await eventually(lambda: watcher.state == "live", timeout=2.0, what="live again")
            await eventually(lambda: watcher.mode_for("x") == spec("READ_YOUR_WRITES"), what="caught up")
            assert watcher.mode_for("cart") == spec("READ_YOUR_WRITES")  # the restarted Redis is empty but v1
            assert watcher.version == 1
        finally:
            await watcher.close()
            restarted.stop()
    finally:
        await watcher.close()


async def test_a_hung_redis_counts_as_down(own_redis):
    # SIGSTOP: TCP stays open but nothing answers; the command timeout must notice.
    with redis.Redis.from_url(own_redis.url, decode_responses=True) as r:
        set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
    watcher = PolicyWatcher(own_redis.url, "svc", spec("STRONG"), "proxy-a", fail_static_ttl_s=30,
                            poll_interval_s=0.1)
    await watcher.start()
    try:
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            await eventually(lambda: watcher.state == "stale", timeout=3, what="stale while Redis hangs")
            assert watcher.mode_for("x") == spec("EVENTUAL")
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        await eventually(lambda: watcher.state == "live", timeout=3, what="live after SIGCONT")
    finally:
        await watcher.close()


async def test_watcher_started_while_redis_is_down_serves_its_default():
    port = redisserver.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    watcher = PolicyWatcher(url, "svc", spec("BOUNDED:500"), "proxy-a", poll_interval_s=0.1)
    started = time.monotonic()
    await watcher.start()
    try:
        assert time.monotonic() - started < 1.5
        assert watcher.state == "default" and watcher.version == 0 and watcher.age_s == float("inf")
        assert watcher.mode_for("anything") == spec("BOUNDED:500")
        server = redisserver.start_local_redis(port=port)
        try:
            with redis.Redis.from_url(url, decode_responses=True) as r:
                set_route_policy(r, "svc", "*", RoutePolicy(spec("EVENTUAL")))
            await eventually(lambda: watcher.mode_for("anything") == spec("EVENTUAL"), timeout=2.5,
                             what="policy once Redis came up")
            assert watcher.state == "live"
        finally:
            await watcher.close()
            server.stop()
    finally:
        await watcher.close()


def test_watcher_rejects_bad_configuration():
    with pytest.raises(ValueError, match="bad Redis URL"):
        PolicyWatcher("http://x", "svc", spec("STRONG"), "p")
    with pytest.raises(ValueError, match="poll_interval_s"):
        PolicyWatcher("redis://127.0.0.1:1/0", "svc", spec("STRONG"), "p", poll_interval_s=0)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
def test_redis_cli_reads_the_plane(r, redis_url):
    set_route_policy(r, "catalog", "*", RoutePolicy(spec("EVENTUAL"), reason="readable"))
    lines = redis_cli(redis_url, "HGETALL", policy_key("catalog")).splitlines()
    shown = dict(zip(lines[::2], lines[1::2]))
    assert shown["_version"] == "1" and json.loads(shown["*"])["reason"] == "readable"
