"""`clidash optimizer run` against a real Redis, fed with telemetry records in the
proxy's exact format (built by proxy.telemetry.build_records): consumer group and
acknowledgements, tightening on stale reads, floors, two processes sharing the
stream, metrics, bad records and an unreachable Redis."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

import redisserver
from clidash.policy import ModeSpec, RoutePolicy, is_weaker
from clidash.policy_store import connect, set_floor, set_route_policy
from clidash.proxy.telemetry import StatementDelta, build_records
from clidash.redis_keys import (DECISIONS_STREAM, OPTIMIZER_PARTIAL_PREFIX, TELEMETRY_GROUP, TELEMETRY_STREAM,
                                policy_key)
from clidash.optimizer.agent import DQNAgent
from clidash.optimizer.config import DQNConfig
from clidash.optimizer.live.runner import LiveOptimizer, model_version_of
from clidash.optimizer.live.settings import build_settings
from clidash.optimizer.live.sharing import Sharing
from clidash.optimizer.state import OBS_DIM
from pgcluster import free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "shop"
WINDOW_S = 0.5


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained agent: its proposals are arbitrary, so what the tests assert comes from
    the guardrails and floors, which must hold whatever the network says."""
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    DQNAgent(DQNConfig(obs_dim=OBS_DIM)).save(path)
    return path


def record(route="catalog", mode="EVENTUAL", *, service=SERVICE, replica_reads=100, primary_reads=0,
           audited=0, stale=0, lag_ms=5.0, proxy_id="proxy-1", window_start=None) -> dict:
    """One telemetry record as a proxy XADDs it, for a 0.1 s window ending now."""
    bucket = [0] * 17
    deltas = {}
    if replica_reads:
        deltas[(service, route, "read", "replica")] = StatementDelta([0, replica_reads] + bucket[2:], 0, {})
    if primary_reads:
        deltas[(service, route, "read", "primary")] = StatementDelta([0, 0, 0, primary_reads] + bucket[4:], 0, {})
    [rec] = build_records(deltas, {}, extras={(service, route): [0, audited, stale]}, proxy_id=proxy_id,
                          window_start=time.time() - 0.1 if window_start is None else window_start,
                          window_s=0.1, replicas=[("replica-1", lag_ms, True)], policy_version=lambda s: 1,
                          mode_for=lambda s, r: mode)
    return rec


def xadd(r, rec) -> str:
    return r.xadd(TELEMETRY_STREAM, {"record": json.dumps(rec, separators=(",", ":"))})


def wait_for(check, timeout=10.0, what="condition", interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


class Running:
    """A LiveOptimizer on a thread, as `clidash optimizer run` would run it."""

    def __init__(self, live: LiveOptimizer):
        self.live = live
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"optimizer-{live.settings.consumer}")
        self.thread.start()

    def _run(self):
        try:
            self.live.run(self.stop)
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "optimizer thread did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def start_optimizer(checkpoint):
    started: list[Running] = []

    def start(redis_url, **overrides) -> Running:
        kwargs = dict(checkpoint=checkpoint, window_s=WINDOW_S, settle_s=0.25, metrics_listen=None,
                      consumer="opt-a", epsilon=0.0, learn=False)
        kwargs.update(overrides)
        settings = build_settings(redis_url, **kwargs)
        running = Running(LiveOptimizer(settings, DQNAgent.load(checkpoint), model_version_of(checkpoint)))
        started.append(running)
        return running

    yield start
    errors = []
    for running in started:
        try:
            running.close()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def group_exists(r) -> bool:
    try:
        return any(g["name"] == TELEMETRY_GROUP for g in r.xinfo_groups(TELEMETRY_STREAM))
    except redis.ResponseError:
        return False


def pending(r) -> int:
    return r.xpending(TELEMETRY_STREAM, TELEMETRY_GROUP)["pending"]


def decisions(r, service=SERVICE, route=None) -> list[dict]:
    out = []
    for _id, fields in r.xrange(DECISIONS_STREAM):
        if fields["service"] == service and (route is None or fields["route"] == route):
            out.append(fields)
    return out


def stored_mode(r, route, service=SERVICE) -> str | None:
    raw = r.hget(policy_key(service), route)
    return None if raw is None else str(RoutePolicy.from_json(raw).spec)


def settled(running: Running, r, n_records: int, timeout=10.0):
    """Wait until n_records were folded, nothing is pending and the windows they fell in were decided."""
    wait_for(lambda: running.live.metrics.records.labels("folded")._value.get() >= n_records and pending(r) == 0,
             timeout, "records folded and acknowledged")
    time.sleep(2 * WINDOW_S + 0.3)


# --------------------------------------------------------------------------- tests


def test_group_is_created_and_folded_entries_are_acknowledged(start_optimizer, redis_url):
    r = connect(redis_url)
    running = start_optimizer(redis_url)
    wait_for(lambda: group_exists(r), what="consumer group `optimizer` on clidash:telemetry")
    ids = [xadd(r, record(replica_reads=10 + i)) for i in range(5)]
    wait_for(lambda: pending(r) == 0 and running.live.metrics.records.labels("folded")._value.get() == 5,
             what="5 entries folded and acknowledged")
    group = next(g for g in r.xinfo_groups(TELEMETRY_STREAM) if g["name"] == TELEMETRY_GROUP)
    assert group["last-delivered-id"] == ids[-1]
    wait_for(lambda: sum(d.records for d in running.live.history) == 5, what="the window decided")
    decided = list(running.live.history)
    assert sum(d.counts["catalog"]["reads_replica"] for d in decided) == sum(10 + i for i in range(5))


def test_a_stale_lagging_window_tightens_an_eventual_route(start_optimizer, redis_url, checkpoint):
    r = connect(redis_url)
    set_route_policy(r, SERVICE, "catalog", RoutePolicy(ModeSpec.parse("EVENTUAL"), reason="test start"))
    start_optimizer(redis_url)
    wait_for(lambda: group_exists(r), what="consumer group")
    xadd(r, record(replica_reads=200, audited=40, stale=12, lag_ms=4000.0))
    wait_for(lambda: stored_mode(r, "catalog") != "EVENTUAL", what="the optimizer to tighten catalog")

    policy = json.loads(r.hget(policy_key(SERVICE), "catalog"))
    assert policy["mode"] == "STRONG" and policy["source"] == "optimizer"
    assert "tripwire" in policy["reason"]
    [entry] = [d for d in decisions(r, route="catalog") if d["source"] == "optimizer"]
    assert (entry["from"], entry["to"]) == ("EVENTUAL", "STRONG")
    assert "tripwire" in entry["reason"] and "0.3000" in entry["reason"]     # 12/40 audited
    q_values = json.loads(entry["q_values"])
    assert len(q_values) == 6 and all(isinstance(q, float) for q in q_values)
    assert entry["model_version"] == model_version_of(checkpoint) and "@" in entry["model_version"]
    assert json.loads(entry["observed"])["stale_found"] == 12
    assert int(entry["version"]) == int(r.hget(policy_key(SERVICE), "_version"))


def _never_weaker(r, route, floor: ModeSpec):
    for d in decisions(r, route=route):
        if d["source"] == "optimizer":
            assert not is_weaker(ModeSpec.parse(d["to"]), floor), d


def test_redis_and_config_floors_are_never_undercut(start_optimizer, redis_url):
    r = connect(redis_url)
    ryw, b50 = ModeSpec.parse("READ_YOUR_WRITES"), ModeSpec.parse("BOUNDED:50")
    set_floor(r, SERVICE, "cart", ryw)
    # Both routes start below their floors, as a hand edit could leave them.
    for route in ("cart", "search"):
        r.hset(policy_key(SERVICE), route, json.dumps({"mode": "EVENTUAL", "source": "redis-cli"}))
    # epsilon 1: every proposal is random; no dwell: relaxing is allowed every window.
    running = start_optimizer(redis_url, epsilon=1.0, dwell_windows=0, floors=[f"{SERVICE}/search=BOUNDED:50"])
    wait_for(lambda: group_exists(r), what="consumer group")
    end = time.monotonic() + 8 * WINDOW_S
    while time.monotonic() < end:
        for route in ("cart", "search"):
            xadd(r, record(route, mode=stored_mode(r, route), replica_reads=50, audited=10, lag_ms=2.0))
        time.sleep(WINDOW_S / 2)
    settled(running, r, 1)
    assert not is_weaker(ModeSpec.parse(stored_mode(r, "cart")), ryw)
    assert not is_weaker(ModeSpec.parse(stored_mode(r, "search")), b50)
    _never_weaker(r, "cart", ryw)
    _never_weaker(r, "search", b50)
    # They were below the floor, so the first decision had to raise them.
    first = {route: next(d for d in decisions(r, route=route) if d["source"] == "optimizer")
             for route in ("cart", "search")}
    assert first["cart"]["from"] == "EVENTUAL" and first["search"]["from"] == "EVENTUAL"
    assert len(running.live.history) >= 4


def test_a_floor_raised_between_read_and_write_is_not_fatal(start_optimizer, redis_url):
    """set_route_policy re-checks the floor inside its transaction: a lost race is logged and retried."""
    r = connect(redis_url)
    set_route_policy(r, SERVICE, "catalog", RoutePolicy(ModeSpec.parse("STRONG"), reason="test start"))
    running = start_optimizer(redis_url, epsilon=1.0, dwell_windows=0)
    wait_for(lambda: group_exists(r), what="consumer group")
    controller = running.live.controller
    original = controller.decide
    raced, raced_at = [], []

    def decide_then_race(inputs):
        # The decider has read the policy (no floor); an operator raises the floor before it writes.
        made = original(inputs)
        if not raced and any(d.changed for d in made):
            set_floor(r, SERVICE, "catalog", ModeSpec.parse("STRONG"))
            raced.append(made)
        return made

    controller.decide = decide_then_race
    # Random proposals: go on until one was a change, then a few more windows under the new floor.
    end = time.monotonic() + 40 * WINDOW_S
    while time.monotonic() < end:
        if raced and not raced_at:
            raced_at.append(time.monotonic())
        if raced_at and time.monotonic() > raced_at[0] + 3 * WINDOW_S:
            break
        xadd(r, record(mode="STRONG", replica_reads=0, primary_reads=30, lag_ms=1.0))
        time.sleep(WINDOW_S / 2)
    assert raced, "the (random) agent never proposed a change"
    assert running.thread.is_alive()
    assert stored_mode(r, "catalog") == "STRONG"
    assert not [d for d in decisions(r, route="catalog") if d["source"] == "optimizer" and d["to"] != d["from"]]
    assert running.live.metrics.write_failures.labels("floor")._value.get() >= 1


def test_flush_and_seal_are_atomic_and_refuse_sealed_windows_and_claimed_entries(redis_url):
    r = connect(redis_url)
    r.xgroup_create(TELEMETRY_STREAM, TELEMETRY_GROUP, id="$", mkstream=True)
    ids = [xadd(r, record()) for _ in range(3)]
    r.xreadgroup(TELEMETRY_GROUP, "a", {TELEMETRY_STREAM: ">"}, count=10)
    r.xclaim(TELEMETRY_STREAM, TELEMETRY_GROUP, "b", 0, [ids[2]])       # b took one over while a stalled
    a, b, c = (Sharing(r, name, partial_ttl_ms=60_000, lease_ms=60_000) for name in "abc")
    key = OPTIMIZER_PARTIAL_PREFIX + f"{SERVICE}:7"

    assert a.flush(SERVICE, 7, '{"from":"a"}', ids) == [ids[2]]          # refused as a whole
    assert not r.exists(key) and pending(r) == 3
    assert a.flush(SERVICE, 7, '{"from":"a"}', ids[:2]) is True
    assert r.hgetall(key) == {"a": '{"from":"a"}'} and pending(r) == 1 and 0 < r.pttl(key) <= 60_000

    assert b.seal_and_read(SERVICE, 7) == ['{"from":"a"}']
    assert c.seal_and_read(SERVICE, 7) is None                          # b decides this window
    assert b.seal_and_read(SERVICE, 7) == ['{"from":"a"}']              # b may retry its own seal
    assert b.flush(SERVICE, 7, '{"from":"b"}', [ids[2]]) is False       # sealed: nothing written or acked
    assert "b" not in r.hgetall(key) and pending(r) == 1

    assert a.try_acquire(SERVICE) and not b.try_acquire(SERVICE)
    assert a.renew(SERVICE) and not b.renew(SERVICE)
    b.release(SERVICE)
    assert a.owner(SERVICE) == "a"
    a.release(SERVICE)
    assert a.owner(SERVICE) is None


def test_two_processes_share_the_stream_each_window_decided_once_and_nothing_lost(start_optimizer, redis_url):
    r = connect(redis_url)
    a = start_optimizer(redis_url, consumer="opt-a")
    b = start_optimizer(redis_url, consumer="opt-b")
    wait_for(lambda: group_exists(r), what="consumer group")
    sent = {"shop": [0, 0], "books": [0, 0]}          # records, replica reads
    end = time.monotonic() + 10 * WINDOW_S
    i = 0
    while time.monotonic() < end:
        service = ("shop", "books")[i % 2]
        reads = 1 + i % 7
        xadd(r, record(service=service, replica_reads=reads, proxy_id=f"p{i % 3}"))
        sent[service][0] += 1
        sent[service][1] += reads
        i += 1
        time.sleep(0.01)
    wait_for(lambda: pending(r) == 0, what="every entry acknowledged")
    time.sleep(2 * WINDOW_S + 0.5)

    folded_a = a.live.metrics.records.labels("folded")._value.get()
    folded_b = b.live.metrics.records.labels("folded")._value.get()
    assert folded_a > 0 and folded_b > 0, "the group should hand entries to both consumers"
    assert folded_a + folded_b == sum(n for n, _ in sent.values())
    history = list(a.live.history) + list(b.live.history)
    seen = [(d.service, k) for d in history for k in d.windows]
    assert len(seen) == len(set(seen)), f"a window was decided twice: {sorted(seen)}"
    for service, (n_records, n_reads) in sent.items():
        mine = [d for d in history if d.service == service]
        assert sum(d.records for d in mine) == n_records, service
        assert sum(d.counts["catalog"]["reads_replica"] for d in mine) == n_reads, service
        deciders = {"opt-a" if d in a.live.history else "opt-b" for d in mine}
        assert len(deciders) == 1, f"{service} decided by {deciders} (one lease holder expected)"
    # Some window merged partials written by both processes.
    merged_both = 0
    for key in r.scan_iter(match=OPTIMIZER_PARTIAL_PREFIX + "*"):
        fields = r.hgetall(key)
        if {"opt-a", "opt-b"} <= set(fields) and "_sealed" in fields:
            merged_both += 1
    assert merged_both > 0


def test_a_dead_consumers_pending_entries_are_claimed_and_late_records_still_count(start_optimizer, redis_url):
    r = connect(redis_url)
    r.xgroup_create(TELEMETRY_STREAM, TELEMETRY_GROUP, id="$", mkstream=True)
    for reads in (3, 4):
        xadd(r, record(replica_reads=reads))
    # A consumer that read these and died before folding them: they stay pending on it.
    assert len(r.xreadgroup(TELEMETRY_GROUP, "dead-one", {TELEMETRY_STREAM: ">"}, count=10)[0][1]) == 2
    running = start_optimizer(redis_url)
    xadd(r, record(replica_reads=5, window_start=time.time() - 20 * WINDOW_S))    # from a closed window
    m = running.live.metrics
    # Claimed once idle for 2 windows, then folded into the current window (late).
    wait_for(lambda: pending(r) == 0 and m.records.labels("folded")._value.get() == 3, timeout=10,
             what="the dead consumer's entries claimed, folded and acknowledged")
    assert m.records.labels("late")._value.get() == 3
    wait_for(lambda: sum(d.records for d in running.live.history) == 3, what="all three decided")
    assert sum(d.counts["catalog"]["reads_replica"] for d in running.live.history) == 12


def test_own_pending_entries_are_recovered_at_start_and_trimmed_ones_acknowledged(start_optimizer, redis_url):
    """A restart under the same --consumer name finds what its previous run read but never stored."""
    r = connect(redis_url)
    r.xgroup_create(TELEMETRY_STREAM, TELEMETRY_GROUP, id="$", mkstream=True)
    gone = xadd(r, record(replica_reads=1))
    r.xreadgroup(TELEMETRY_GROUP, "opt-a", {TELEMETRY_STREAM: ">"}, count=10)
    r.xtrim(TELEMETRY_STREAM, maxlen=0)                                 # trimmed while pending
    xadd(r, record(replica_reads=9))
    r.xreadgroup(TELEMETRY_GROUP, "opt-a", {TELEMETRY_STREAM: ">"}, count=10)
    assert pending(r) == 2 and gone
    running = start_optimizer(redis_url, consumer="opt-a")
    m = running.live.metrics
    wait_for(lambda: pending(r) == 0 and m.records.labels("trimmed")._value.get() == 1
             and m.records.labels("folded")._value.get() == 1, what="recovered: one trimmed, one folded")
    wait_for(lambda: sum(d.records for d in running.live.history) == 1, what="the recovered record decided")


def test_when_the_owner_stops_another_process_takes_the_service_over(start_optimizer, redis_url):
    r = connect(redis_url)
    a = start_optimizer(redis_url, consumer="opt-a")
    wait_for(lambda: group_exists(r), what="consumer group")
    xadd(r, record(replica_reads=1))
    wait_for(lambda: r.get(f"clidash:optimizer:owner:{SERVICE}") == "opt-a", what="opt-a to own the service")
    b = start_optimizer(redis_url, consumer="opt-b")
    time.sleep(WINDOW_S)
    a.close()                                   # a clean exit releases the lease at once
    assert r.get(f"clidash:optimizer:owner:{SERVICE}") is None
    end = time.monotonic() + 4 * WINDOW_S
    while time.monotonic() < end:
        xadd(r, record(replica_reads=1))
        time.sleep(0.05)
    wait_for(lambda: len(b.live.history) >= 2, what="opt-b deciding the service")
    assert r.get(f"clidash:optimizer:owner:{SERVICE}") == "opt-b"


def test_bad_records_are_counted_and_skipped(start_optimizer, redis_url):
    r = connect(redis_url)
    running = start_optimizer(redis_url)
    wait_for(lambda: group_exists(r), what="consumer group")
    r.xadd(TELEMETRY_STREAM, {"record": "{nope"})
    r.xadd(TELEMETRY_STREAM, {"something": "else"})
    r.xadd(TELEMETRY_STREAM, {"record": json.dumps({"service": SERVICE, "window_start": "yesterday"})})
    broken = record()
    broken["routes"][0]["read_replica_hist"] = [1, 2, 3]
    xadd(r, broken)
    xadd(r, record(replica_reads=42))
    m = running.live.metrics
    wait_for(lambda: m.records.labels("bad")._value.get() == 4 and m.records.labels("folded")._value.get() == 1
             and pending(r) == 0, what="4 bad entries counted, 1 folded, all acknowledged")
    wait_for(lambda: sum(d.records for d in running.live.history) == 1, what="the good record decided")
    assert running.thread.is_alive()
    assert running.live.history[-1].counts["catalog"]["reads_replica"] == 42


def test_unreachable_redis_at_start_is_reported_and_retried(start_optimizer, caplog):
    port = free_port()
    caplog.set_level(logging.ERROR, logger="clidash.optimizer.live")
    running = start_optimizer(f"redis://127.0.0.1:{port}/0")
    wait_for(lambda: any("cannot use Redis at redis://127.0.0.1:%d" % port in rec.getMessage()
                         for rec in caplog.records), what="a clear error in the log")
    time.sleep(1.0)
    assert running.thread.is_alive()
    assert running.live.metrics.redis_errors._value.get() >= 2      # it keeps trying
    server = redisserver.start_local_redis(port=port)
    try:
        r = connect(server.url)
        wait_for(lambda: group_exists(r), what="the group created once Redis is up")
        xadd(r, record(replica_reads=7))
        wait_for(lambda: sum(d.records for d in running.live.history) == 1, what="a window decided")
    finally:
        running.close()
        server.stop()


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_cli_run_config_file_metrics_log_and_clean_sigterm(redis_url, checkpoint, tmp_path):
    r = connect(redis_url)
    set_route_policy(r, SERVICE, "catalog", RoutePolicy(ModeSpec.parse("EVENTUAL"), reason="test start"))
    metrics_port = free_port()
    config = tmp_path / "clidash.toml"
    config.write_text(f"""
[optimizer]
redis = "{redis_url}"
checkpoint = "{checkpoint}"
window = {WINDOW_S}
settle = 0.25
metrics-listen = "127.0.0.1:{metrics_port}"
consumer = "cli-opt"
epsilon = 0.0
save-to = "{tmp_path / 'state'}"

[optimizer.route_stale_budgets]
"{SERVICE}/catalog" = 0.02
""")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CLIDASH_OPTIMIZER_RUN_LOG_LEVEL": "info"}
    log_path = tmp_path / "optimizer.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "clidash", "optimizer", "run", "--config", str(config)],
                                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        try:
            wait_for(lambda: group_exists(r) or proc.poll() is not None, timeout=60, what="the CLI to start")
            assert proc.poll() is None, log_path.read_text()
            xadd(r, record(replica_reads=200, audited=50, stale=10, lag_ms=3000.0))
            wait_for(lambda: stored_mode(r, "catalog") == "STRONG", what="the CLI optimizer to tighten catalog")
            samples = _scrape(metrics_port)
            for name in ("clidash_optimizer_decisions_total", "clidash_optimizer_reward",
                         "clidash_optimizer_latency_saved_seconds_total", "clidash_optimizer_stale_rate",
                         "clidash_optimizer_guardrail_total", "clidash_optimizer_telemetry_records_total",
                         "clidash_optimizer_windows_decided_total"):
                assert name in samples, f"{name} missing from /metrics"
            [change] = [s for s in samples["clidash_optimizer_decisions_total"]
                        if s.labels["to_mode"] == "STRONG"]
            assert change.labels == {"service": SERVICE, "route": "catalog", "from_mode": "EVENTUAL",
                                     "to_mode": "STRONG"} and change.value == 1
            [stale] = samples["clidash_optimizer_stale_rate"]
            assert stale.value == pytest.approx(0.2)
            assert any(s.labels["kind"] == "tripwire" and s.value == 1
                       for s in samples["clidash_optimizer_guardrail_total"])
            # 10/50 = 0.2 > 3 x the TOML's 0.02 budget: the tripwire fired on the per-route budget.
            assert "0.0200" in json.loads(r.hget(policy_key(SERVICE), "catalog"))["reason"]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    text = log_path.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    change_lines = [line for line in text.splitlines() if f"{SERVICE}/catalog EVENTUAL -> STRONG" in line]
    assert len(change_lines) == 1, text
    assert (tmp_path / "state" / "cli-opt.pt").is_file()
    assert r.get(f"clidash:optimizer:owner:{SERVICE}") is None          # lease released on exit


def test_cli_errors_are_one_line(redis_url, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "clidash", "optimizer", "run", *args], capture_output=True,
                              text=True, timeout=60, cwd=REPO_ROOT)

    missing = run("--redis", redis_url, "--checkpoint", str(tmp_path / "none.pt"))
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    broken = run("--redis", redis_url, "--checkpoint", str(garbage))
    assert broken.returncode == 1 and "cannot load checkpoint" in broken.stderr
    bad_floor = run("--redis", redis_url, "--floor", "shop/cart=SOMETIMES")
    assert bad_floor.returncode == 2 and "floor shop/cart" in bad_floor.stderr
    # An install without the [optimizer] extra: torch cannot be imported.
    no_torch = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from clidash.cli import main; "
         "main(['optimizer', 'run', '--redis', sys.argv[1], '--checkpoint', sys.argv[2]])", redis_url, str(garbage)],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert no_torch.returncode == 1 and "the optimizer needs torch" in no_torch.stderr
    for result in (missing, broken, bad_floor, no_torch):
        assert "Traceback" not in result.stderr
