"""The closed loop on real servers: primary + hot standby, a proxy publishing telemetry
with the stale-read audit, Redis, and `clidash optimizer run` (the committed default
checkpoint) as a subprocess.

Two routes of service `shop`:
  catalog  reads of a table another client keeps updating: tolerates staleness, starts EVENTUAL;
  ryw      each worker updates its own row and reads it back: floor READ_YOUR_WRITES.
While the standby's replay is paused (writes continue), the optimizer must take catalog
off the lagging replica within two decision windows and keep the audited stale rate
within budget; after replay resumes both routes must come back to a replica-using mode.
Where reads ran is read from the servers (pg_is_in_recovery() on probe sessions that
the audit skips), the stale rate from the proxy's telemetry records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clidash.policy import ModeSpec, RoutePolicy
from clidash.policy_store import connect, set_floor, set_route_policy
from clidash.redis_keys import DECISIONS_STREAM, TELEMETRY_STREAM, policy_key
from clidash.optimizer.live.settings import DEFAULT_CHECKPOINT
from pgcluster import free_port

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "shop"
WINDOW_S = 2.0
SETTLE_S = 1.0
STALE_BUDGET = 0.01
ROWS = 20
# CLIDASH_TEST_OPTIMIZER_CHECKPOINT runs the loop with another checkpoint (e.g. a fresh training run).
CHECKPOINT = Path(os.environ.get("CLIDASH_TEST_OPTIMIZER_CHECKPOINT") or DEFAULT_CHECKPOINT)
REPLICA_USING = ("READ_YOUR_WRITES", "BOUNDED", "EVENTUAL")


def tag(route: str) -> str:
    return f"/*application='{SERVICE}',route='{route}'*/"


class Workload:
    """Threads through the proxy (and one writer on the primary), until stop()."""

    def __init__(self, proxy_dsn: str, primary_dsn: str, catalog: str, ryw: str):
        self.proxy_dsn, self.primary_dsn = proxy_dsn, primary_dsn
        self.catalog, self.ryw = catalog, ryw
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.ryw_violations: list[tuple] = []
        self.ryw_reads = 0
        self.probes: deque = deque(maxlen=100_000)     # (time, route, ran_on_replica)
        self.threads = [threading.Thread(target=self._guard, args=(fn,), daemon=True)
                        for fn in (self._writer, self._catalog_reader, self._catalog_reader,
                                   lambda: self._ryw_worker(1), lambda: self._ryw_worker(2), self._probe)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=10)

    def _guard(self, fn):
        try:
            fn()
        except BaseException as exc:   # reported by the test
            if not self.stopping.is_set():
                self.errors.append(exc)

    def _writer(self):
        with psycopg.connect(self.primary_dsn, autocommit=True) as conn:
            i = 0
            while not self.stopping.is_set():
                conn.execute(f"UPDATE {self.catalog} SET v = v + 1 WHERE id = {i % ROWS}")
                i += 1
                time.sleep(0.02)        # each row changes every ~0.4 s

    def _catalog_reader(self):
        with psycopg.connect(self.proxy_dsn, autocommit=True) as conn:
            i = 0
            while not self.stopping.is_set():
                conn.execute(f"SELECT v FROM {self.catalog} WHERE id = {i % ROWS} {tag('catalog')}").fetchone()
                i += 1
                time.sleep(0.005)

    def _ryw_worker(self, row: int):
        # Update a row, then read it back a few times (a profile page after an edit): the first
        # read usually beats replay to the replica and goes to the primary, later ones need not.
        with psycopg.connect(self.proxy_dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                written = conn.execute(f"UPDATE {self.ryw} SET v = v + 1 WHERE id = {row} RETURNING v "
                                       f"{tag('ryw')}").fetchone()[0]
                for _ in range(5):
                    seen = conn.execute(f"SELECT v FROM {self.ryw} WHERE id = {row} {tag('ryw')}").fetchone()[0]
                    self.ryw_reads += 1
                    if seen != written:    # only this worker writes the row: anything else is stale
                        self.ryw_violations.append((time.time(), row, written, seen))
                    time.sleep(0.01)
                time.sleep(0.02)        # lets the audit of the last read finish before the next write

    def _probe(self):
        # A session with a SET is never audited (the audit replays reads with default settings),
        # so these answers, which differ by server on purpose, never count as stale.
        with psycopg.connect(self.proxy_dsn, autocommit=True) as conn:
            conn.execute("SET search_path TO public")
            while not self.stopping.is_set():
                for route in ("catalog", "ryw"):
                    on_replica = conn.execute(f"SELECT pg_is_in_recovery() {tag(route)}").fetchone()[0]
                    self.probes.append((time.time(), route, on_replica))
                time.sleep(0.05)

    def replica_share(self, route: str, since: float, until: float | None = None) -> tuple[float, int]:
        rows = [r for t, rt, r in list(self.probes) if rt == route and t >= since and (until is None or t < until)]
        return (sum(rows) / len(rows) if rows else float("nan")), len(rows)


def stored(r, route) -> ModeSpec | None:
    raw = r.hget(policy_key(SERVICE), route)
    return None if raw is None else RoutePolicy.from_json(raw).spec


def telemetry(r, route: str, since: float) -> list[dict]:
    """Route entries (plus the window's replica lag) of telemetry records that started at or after `since`."""
    out = []
    for _id, fields in r.xrange(TELEMETRY_STREAM):
        rec = json.loads(fields["record"])
        if rec["service"] != SERVICE or rec["window_start"] < since:
            continue
        for entry in rec["routes"]:
            if entry["route"] == route:
                out.append({**entry, "window_start": rec["window_start"],
                            "lag_ms": max((x["lag_ms_max"] or 0.0 for x in rec["replicas"]), default=0.0)})
    return out


def decisions_log(r) -> str:
    lines = []
    for entry_id, d in r.xrange(DECISIONS_STREAM):
        if d.get("service") == SERVICE:
            lines.append(f"{entry_id} {d['route']}: {d['from']} -> {d['to']} [{d['source']}] {d['reason']} "
                         f"q={d.get('q_values', '')} obs={d.get('observed', '')}")
    return "\n".join(lines)


def wait_until(check, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return check()


def test_optimizer_moves_reads_off_a_lagging_replica_and_back(pg_cluster, proxy_factory, redis_url, tmp_path):
    assert CHECKPOINT.is_file(), f"no optimizer checkpoint at {CHECKPOINT} (train one: clidash optimizer train)"
    r = connect(redis_url)
    primary = psycopg.connect(pg_cluster.primary.dsn, autocommit=True)
    standby = psycopg.connect(pg_cluster.replicas[0].dsn, autocommit=True)
    suffix = os.urandom(3).hex()
    catalog, ryw = f"loop_catalog_{suffix}", f"loop_ryw_{suffix}"
    primary.execute(f"CREATE TABLE {catalog} (id int PRIMARY KEY, v int NOT NULL)")
    primary.execute(f"INSERT INTO {catalog} SELECT g, 0 FROM generate_series(0, {ROWS - 1}) g")
    primary.execute(f"CREATE TABLE {ryw} (id int PRIMARY KEY, v int NOT NULL)")
    primary.execute(f"INSERT INTO {ryw} VALUES (1, 0), (2, 0)")
    pg_cluster.wait_for_replicas()

    set_route_policy(r, SERVICE, "catalog", RoutePolicy(ModeSpec.parse("EVENTUAL"), reason="test: start"))
    set_route_policy(r, SERVICE, "ryw", RoutePolicy(ModeSpec.parse("READ_YOUR_WRITES"), reason="test: start"))
    set_floor(r, SERVICE, "ryw", ModeSpec.parse("READ_YOUR_WRITES"))
    proxy = proxy_factory("STRONG", ["--service", SERVICE, "--redis", redis_url, "--telemetry-window", "0.5",
                                     "--audit-rate", "0.2"])
    metrics_port = free_port()
    opt_log = tmp_path / "optimizer.log"
    cmd = [sys.executable, "-m", "clidash", "optimizer", "run", "--redis", redis_url,
           "--checkpoint", str(CHECKPOINT), "--window", str(WINDOW_S), "--settle", str(SETTLE_S),
           "--metrics-listen", f"127.0.0.1:{metrics_port}", "--consumer", "e2e-optimizer",
           "--stale-budget", str(STALE_BUDGET), "--epsilon", "0",
           # Short guardrail periods keep the test within ~90 s; their logic is what production runs.
           "--dwell-windows", "1", "--freeze-windows", "3"]
    log_file = open(opt_log, "wb")
    optimizer = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    workload = Workload(proxy.dsn(), pg_cluster.primary.dsn, catalog, ryw)
    paused = False

    def report() -> str:
        return (f"\n--- decisions ---\n{decisions_log(r)}\n--- optimizer log ---\n"
                f"{opt_log.read_text(errors='replace')[-6000:]}")

    try:
        workload.start()
        # Steady: the optimizer is up and has decided a couple of windows; catalog still uses the
        # replica (else the pause below would test nothing).
        assert wait_until(lambda: optimizer.poll() is not None or windows_decided(metrics_port) >= 2, 40), report()
        assert optimizer.poll() is None, f"the optimizer exited with {optimizer.returncode}" + report()

        # The policy may move while it settles (it starts from modes a human set); wait until
        # catalog's reads have landed on the replica for a whole window.
        def on_replica_steadily():
            share, n = workload.replica_share("catalog", time.time() - WINDOW_S)
            return stored(r, "catalog").mode.name in REPLICA_USING and n > 5 and share > 0.9
        assert wait_until(on_replica_steadily, 12 * WINDOW_S), \
            f"catalog never settled on the replica before the pause: {stored(r, 'catalog')}" + report()

        # Start the pause from the loosest mode, so the optimizer itself has to act (a BOUNDED:50
        # it may have chosen would keep reads off the lagging replica on its own).
        set_route_policy(r, SERVICE, "catalog", RoutePolicy(ModeSpec.parse("EVENTUAL"), reason="test: before the pause"))
        standby.execute("SELECT pg_wal_replay_pause()")
        paused = True
        t_pause = time.time()
        deadline = 2 * WINDOW_S + SETTLE_S + 2.0          # two windows, the settle delay, and slack

        def off_the_replica():
            """The catalog policy once it keeps reads off the lagging replica: STRONG, or BOUNDED below
            the replica's lag as the proxy last measured it (then the proxy itself sends the reads to
            the primary: BOUNDED:50 chosen before the pause qualifies once the lag passes 50 ms).
            Not READ_YOUR_WRITES: catalog sessions never write, so it reads any replica under the
            30 s hard cap, stale or not."""
            spec = stored(r, "catalog")
            if spec.mode.name == "STRONG":
                return spec
            if spec.mode.name == "BOUNDED":
                recent = telemetry(r, "catalog", time.time() - 1.5)
                if recent and spec.max_lag_ms < recent[-1]["lag_ms"]:
                    return spec
            return None

        spec = wait_until(off_the_replica, deadline)
        t_change = time.time()
        assert spec is not None, f"catalog still {stored(r, 'catalog')} {deadline}s after the pause" + report()
        assert stored(r, "ryw").mode.name in ("READ_YOUR_WRITES", "STRONG")

        # Hold the pause: reads of catalog land on the primary and the audited stale rate is within budget.
        time.sleep(2 * WINDOW_S)
        share, n = workload.replica_share("catalog", t_change + 0.5)
        assert n > 10 and share == 0.0, \
            f"catalog probes on the paused replica after the change: {share} of {n}" + report()
        after = telemetry(r, "catalog", t_change + 0.5)
        audited = sum(e["stale_audited"] for e in after)
        stale = sum(e["stale_found"] for e in after)
        assert stale <= STALE_BUDGET * max(audited, 1), \
            f"catalog stale {stale}/{audited} after the change (budget {STALE_BUDGET})" + report()
        # The pause did make the replica lag (so the checks above tested something).
        during = telemetry(r, "catalog", t_pause)
        assert max((e["lag_ms"] for e in during), default=0.0) > 1000, \
            f"the replica never lagged > 1 s while replay was paused: {[e['lag_ms'] for e in during]}"

        standby.execute("SELECT pg_wal_replay_resume()")
        paused = False
        t_resume = time.time()
        # Freeze (3 windows at most) + dwell (1) + one relaxing step per window: RYW is one step from STRONG.
        bound = 7 * WINDOW_S + SETTLE_S + 2.0
        back = wait_until(lambda: all(stored(r, rt).mode.name in REPLICA_USING for rt in ("catalog", "ryw")), bound)
        assert back, (f"not back on a replica-using mode {bound:.0f}s after resume: catalog "
                      f"{stored(r, 'catalog')}, ryw {stored(r, 'ryw')}" + report())
        t_back = time.time()
        time.sleep(1.5)
        for route in ("catalog", "ryw"):
            share, n = workload.replica_share(route, t_back + 0.5)
            assert n > 5 and share > 0.5, f"{route} probes on the replica after its return: {share} of {n}" + report()
        print(f"pause -> catalog {spec} in {t_change - t_pause:.1f}s; resume -> back in {t_back - t_resume:.1f}s",
              report())     # shown with -s: what the optimizer did
        assert t_back - t_resume <= bound
        assert not workload.ryw_violations, f"read-your-writes violated: {workload.ryw_violations[:5]}"
        assert workload.ryw_reads > 50 and not workload.errors, workload.errors
    finally:
        if paused:
            standby.execute("SELECT pg_wal_replay_resume()")
        workload.stop()
        optimizer.send_signal(signal.SIGTERM)
        try:
            code = optimizer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            optimizer.kill()
            code = optimizer.wait()
        log_file.close()
        primary.execute(f"DROP TABLE IF EXISTS {catalog}, {ryw}")
        primary.close()
        standby.close()
    assert code == 0, opt_log.read_text()
    assert "Traceback" not in opt_log.read_text()


def windows_decided(metrics_port: int) -> float:
    """clidash_optimizer_windows_decided_total from the optimizer's /metrics (0 until it answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "clidash_optimizer_windows_decided_total":
                return sample.value
    return 0.0
