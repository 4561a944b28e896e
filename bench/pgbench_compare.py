"""pgbench select-only throughput and latency: direct vs PgBouncer vs a byte pipe vs CLIDash.

Prints figures, never pass/fail. Starts its own primary + replica from the local
PostgreSQL binaries unless DSNs are given (--primary/--replica, or the
CLIDASH_TEST_PG_PRIMARY / CLIDASH_TEST_PG_REPLICAS env vars).

    python bench/pgbench_compare.py [--duration 10] [--scale 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "deploy" / "local"))

import pgcluster  # noqa: E402
from procutil import stop_process  # noqa: E402
from pgcluster import PgCluster, PgServer  # noqa: E402

PGBOUNCER_POOL_SIZE = 20
PGBOUNCER_PREPARED_MIN = (1, 21)  # protocol-level prepared statements in transaction mode
LISTEN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class BenchConfig:
    name: str
    clients: int
    threads: int
    protocol: str  # pgbench -M: simple | prepared


CONFIGS = [
    BenchConfig("16c simple", 16, 2, "simple"),
    BenchConfig("16c prepared", 16, 2, "prepared"),
    BenchConfig("1c simple", 1, 1, "simple"),
]
TARGETS = ["direct", "pgbouncer", "bytepipe", "clidash"]


@dataclass
class Result:
    config: str
    target: str
    tps: float | None = None
    avg_ms: float | None = None
    p99_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    note: str = ""  # why a cell is n/a or failed


class TargetUnavailable(Exception):
    """A target could not be started; its cells are reported with the reason."""


# --------------------------------------------------------------------------- processes


def wait_listening(host: str, port: int, process: subprocess.Popen, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TargetUnavailable(f"{what} exited with code {process.returncode}: {tail(log_path)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TargetUnavailable(f"{what} not listening on {host}:{port} after {LISTEN_TIMEOUT_S:.0f}s: {tail(log_path)}")


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


@contextlib.contextmanager
def spawn(cmd: list[str], log_path: Path, host: str, port: int, what: str, cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_listening(host, port, process, log_path, what)
        yield process
    finally:
        stop_process(process)


# --------------------------------------------------------------------------- targets


def pgbouncer_version(binary: str) -> tuple[int, ...] | None:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


@contextlib.contextmanager
def pgbouncer_target(primary: PgServer, workdir: Path) -> Iterator[tuple[str, int, tuple[int, ...] | None]]:
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        raise TargetUnavailable("pgbouncer not installed (Debian/Ubuntu: apt-get install pgbouncer)")
    version = pgbouncer_version(binary)
    home = workdir / "pgbouncer"
    home.mkdir()
    port = pgcluster.free_port()
    prepared = version is not None and version >= PGBOUNCER_PREPARED_MIN
    (home / "userlist.txt").write_text(f'"{primary.user}" "{primary.password}"\n')
    (home / "pgbouncer.ini").write_text(f"""[databases]
{primary.dbname} = host={primary.host} port={primary.port} dbname={primary.dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home / "userlist.txt"}
pool_mode = transaction
default_pool_size = {PGBOUNCER_POOL_SIZE}
max_client_conn = 500
server_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
logfile = {home / "pgbouncer.log"}
pidfile = {home / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
{"max_prepared_statements = 200" if prepared else ""}
""")
    # PgBouncer refuses to run as root; the postgres OS user then needs to own its files.
    for path in (home, *home.iterdir()):
        pgcluster.chown_to_pg_os_user(str(path))
    cmd = pgcluster.as_pg_os_user([binary, str(home / "pgbouncer.ini")])
    with spawn(cmd, home / "stdout.log", "127.0.0.1", port, "pgbouncer") as process:
        try:
            yield "127.0.0.1", port, version
        finally:
            # Signal pgbouncer itself (runuser may not pass a signal on), then let runuser reap it
            # and exit on its own: killing runuser first can orphan a zombie.
            kill_by_pidfile(home / "pgbouncer.pid")
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


def kill_by_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


@contextlib.contextmanager
def bytepipe_target(primary: PgServer, workdir: Path) -> Iterator[tuple[str, int]]:
    port = pgcluster.free_port()
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "bytepipe.py"),
           "--listen", f"127.0.0.1:{port}", "--target", f"{primary.host}:{primary.port}"]
    with spawn(cmd, workdir / "bytepipe.log", "127.0.0.1", port, "bytepipe"):
        yield "127.0.0.1", port


@contextlib.contextmanager
def clidash_target(cluster: PgCluster, workdir: Path, extra_args: list[str]) -> Iterator[tuple[str, int]]:
    port = pgcluster.free_port()
    cmd = [sys.executable, "-m", "clidash", "proxy", "--protocol", "postgresql",
           "--listen", f"127.0.0.1:{port}", "--primary", cluster.primary.dsn,
           "--metrics-listen", f"127.0.0.1:{pgcluster.free_port()}"]
    for replica in cluster.replicas:
        cmd += ["--replica", replica.dsn]
    cmd += ["--service", "bench", "--mode", "EVENTUAL", *extra_args]
    with spawn(cmd, workdir / "clidash.log", "127.0.0.1", port, "clidash proxy", cwd=REPO_ROOT):
        yield "127.0.0.1", port


# --------------------------------------------------------------------------- pgbench


def pgbench_binary() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    candidate = os.path.join(pgcluster.find_pg_bindir(), "pgbench")
    if os.path.exists(candidate):
        return candidate
    raise SystemExit("pgbench not found (Debian/Ubuntu: apt-get install postgresql-client)")


def pgbench_env(server: PgServer) -> dict[str, str]:
    # TLS is off for every target so the figures compare forwarding, not handshakes.
    return {**os.environ, "PGPASSWORD": server.password, "PGSSLMODE": "disable"}


def pgbench_init(server: PgServer, scale: int) -> None:
    cmd = [pgbench_binary(), "-i", "-s", str(scale), "-q", "-h", server.host, "-p", str(server.port),
           "-U", server.user, server.dbname]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=pgbench_env(server), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pgbench -i failed:\n{proc.stdout}{proc.stderr}")


def latency_stats_us(log_prefix: Path) -> tuple[float, float, int] | None:
    """(avg, p99, count) of per-transaction latencies (µs) from pgbench -l logs (one file per thread)."""
    latencies: list[int] = []
    for path in glob.glob(f"{log_prefix}.*"):
        with open(path) as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():  # failed transactions log a word instead
                    latencies.append(int(fields[2]))
        os.unlink(path)
    if not latencies:
        return None
    latencies.sort()
    p99 = latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]
    return sum(latencies) / len(latencies), p99, len(latencies)


def run_pgbench(config: BenchConfig, target: str, host: str, port: int, server: PgServer,
                duration: int, workdir: Path) -> Result:
    result = Result(config.name, target)
    log_prefix = workdir / f"txlog-{target}-{config.clients}c-{config.protocol}"
    cmd = [pgbench_binary(), "-n", "-S", "-T", str(duration), "-c", str(config.clients), "-j", str(config.threads),
           "-M", config.protocol, "-l", f"--log-prefix={log_prefix}",
           "-h", host, "-p", str(port), "-U", server.user, server.dbname]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=pgbench_env(server),
                              timeout=duration + 60, check=False, cwd=workdir)
    except subprocess.TimeoutExpired:
        result.note = "pgbench timed out"
        return result
    output = proc.stdout + proc.stderr
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", output)
    processed = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if proc.returncode != 0 or not tps:
        first_error = next((l for l in output.splitlines() if "error" in l.lower() or "fatal" in l.lower()),
                           output.strip().splitlines()[-1] if output.strip() else "no output")
        result.note = f"pgbench exit {proc.returncode}: {first_error.strip()}"
        for path in glob.glob(f"{log_prefix}.*"):
            os.unlink(path)
        if not tps:
            return result
    result.tps = float(tps.group(1))
    result.transactions = int(processed.group(1)) if processed else None
    result.failed = int(failed.group(1)) if failed else 0
    stats = latency_stats_us(log_prefix)
    if stats:
        result.avg_ms, result.p99_ms = stats[0] / 1000, stats[1] / 1000
    return result


# --------------------------------------------------------------------------- cluster prep


async def _connect(server: PgServer):
    import asyncpg

    return await asyncpg.connect(host=server.host, port=server.port, user=server.user,
                                 password=server.password, database=server.dbname, ssl=False)


async def _create_prewarm_extension(primary: PgServer) -> str | None:
    """None when pg_prewarm is ready to use, else why not (e.g. contrib missing, no privilege)."""
    conn = await _connect(primary)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        return None
    except Exception as exc:
        return f"no prewarm: {exc.__class__.__name__}"
    finally:
        await conn.close()


async def _prewarm(servers: list[PgServer]) -> None:
    """Load the pgbench tables into the OS page cache on every server so no target starts cold."""
    for server in servers:
        conn = await _connect(server)
        try:
            for relation in ("pgbench_accounts", "pgbench_accounts_pkey", "pgbench_branches", "pgbench_tellers"):
                await conn.execute("SELECT pg_prewarm($1::regclass, 'read')", relation)
        finally:
            await conn.close()


def prepare_cluster(cluster: PgCluster, scale: int) -> str:
    """pgbench -i on the primary, replicas caught up, caches warm; returns a note for the header."""
    pgbench_init(cluster.primary, scale)
    no_prewarm = asyncio.run(_create_prewarm_extension(cluster.primary))
    if cluster.replicas:
        cluster.wait_for_replicas(timeout=300)  # CLIDash reads from them in EVENTUAL mode
    if no_prewarm:
        return no_prewarm
    try:
        asyncio.run(_prewarm(cluster.servers))
    except Exception as exc:
        return f"prewarm failed: {exc!r}"
    return "prewarmed"


def cluster_from_args(args: argparse.Namespace) -> PgCluster:
    if args.primary:
        return PgCluster(primary=PgServer.from_dsn(args.primary, "primary"),
                         replicas=[PgServer.from_dsn(d, "replica") for d in args.replica], source="args")
    cluster = pgcluster.cluster_from_env()
    if cluster:
        return cluster
    print("starting a local primary + 1 replica ...", file=sys.stderr, flush=True)
    return pgcluster.start_local_cluster(replicas=1)


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str, width: int = 0) -> str:
    return format("-" if value is None else format(value, spec), f">{width}")


def ratio(a: Result | None, b: Result | None) -> float | None:
    if a and b and a.tps and b.tps:
        return a.tps / b.tps
    return None


def added_latency_us(results: list[Result], target: str, config: str = "1c simple") -> float | None:
    by_key = {(r.target, r.config): r for r in results}
    mine, direct = by_key.get((target, config)), by_key.get(("direct", config))
    if mine and direct and mine.avg_ms is not None and direct.avg_ms is not None:
        return (mine.avg_ms - direct.avg_ms) * 1000
    return None


def print_table(results: list[Result]) -> None:
    by_key = {(r.target, r.config): r for r in results}
    header = f"{'config':<13} {'target':<10} {'tps':>10} {'avg ms':>8} {'p99 ms':>8} {'/direct':>8} {'/pgbouncer':>10}  note"
    print(header)
    print("-" * len(header))
    for config in CONFIGS:
        for target in TARGETS:
            r = by_key.get((target, config.name))
            if r is None:
                continue
            vs_direct = ratio(r, by_key.get(("direct", config.name))) if target != "direct" else None
            vs_bouncer = ratio(r, by_key.get(("pgbouncer", config.name))) if target != "pgbouncer" else None
            print(f"{r.config:<13} {r.target:<10} {fmt(r.tps, '.0f', 10)} {fmt(r.avg_ms, '.3f', 8)} "
                  f"{fmt(r.p99_ms, '.3f', 8)} {fmt(vs_direct, '.2f', 8)} {fmt(vs_bouncer, '.2f', 10)}  {r.note}")
    print()
    for target in ("clidash", "bytepipe", "pgbouncer"):
        added = added_latency_us(results, target)
        label = {"clidash": "CLIDash", "bytepipe": "bytepipe", "pgbouncer": "PgBouncer"}[target]
        print(f"added avg latency at 1 client ({label} - direct): {fmt(added, '+.0f')} µs")


# --------------------------------------------------------------------------- main


def run_target(target: str, cluster: PgCluster, args: argparse.Namespace, workdir: Path) -> list[Result]:
    """All configs against one target; a target that cannot start fails soft with the reason."""
    primary = cluster.primary
    results: list[Result] = []
    try:
        with contextlib.ExitStack() as stack:
            skip_prepared = None
            if target == "direct":
                host, port = primary.host, primary.port
            elif target == "pgbouncer":
                host, port, version = stack.enter_context(pgbouncer_target(primary, workdir))
                if version is None or version < PGBOUNCER_PREPARED_MIN:
                    shown = ".".join(map(str, version)) if version else "unknown"
                    skip_prepared = f"n/a: PgBouncer {shown} < 1.21 has no prepared statements in transaction mode"
            elif target == "bytepipe":
                host, port = stack.enter_context(bytepipe_target(primary, workdir))
            else:
                host, port = stack.enter_context(clidash_target(cluster, workdir, args.clidash_arg))
            for config in CONFIGS:
                if config.protocol == "prepared" and skip_prepared:
                    results.append(Result(config.name, target, note=skip_prepared))
                    continue
                print(f"  {target:<10} {config.name} ...", file=sys.stderr, flush=True)
                results.append(run_pgbench(config, target, host, port, primary, args.duration, workdir))
    except TargetUnavailable as exc:
        print(f"  {target}: unavailable: {exc}", file=sys.stderr, flush=True)
        reason = str(exc).rsplit(" | ", 1)[-1][:120]  # the last log line usually names the error
        done = {r.config for r in results}
        results += [Result(c.name, target, note=f"unavailable: {reason}") for c in CONFIGS if c.name not in done]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale factor (default 10)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma list from {','.join(TARGETS)}")
    parser.add_argument("--primary", help="primary DSN (default: env CLIDASH_TEST_PG_PRIMARY or a local cluster)")
    parser.add_argument("--replica", action="append", default=[], help="replica DSN (repeatable)")
    parser.add_argument("--clidash-arg", action="append", default=[], help="extra argument for the proxy (repeatable)")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    cluster = cluster_from_args(args)
    workdir = Path(tempfile.mkdtemp(prefix="clidash-bench-"))
    pgcluster.chown_to_pg_os_user(str(workdir))  # PgBouncer (run as postgres) writes under it
    results: list[Result] = []
    try:
        print(f"pgbench -i -s {args.scale} on the primary ...", file=sys.stderr, flush=True)
        warm_note = prepare_cluster(cluster, args.scale)
        print(f"cluster ready ({cluster.source}, {cluster.base_dir or 'external'}, {warm_note}); "
              f"{args.duration}s per run", file=sys.stderr, flush=True)
        for target in TARGETS:
            if target in targets:
                results += run_target(target, cluster, args, workdir)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"pgbench -S (select-only), scale {args.scale}, {args.duration}s per run, {os.cpu_count()} CPUs; "
          f"tps excludes connection time; avg/p99 from per-transaction logs")
    print_table(results)
    if args.json:
        document = {
            "meta": {"duration_s": args.duration, "scale": args.scale, "cpus": os.cpu_count(),
                     "platform": platform.platform(), "cluster_source": cluster.source,
                     "configs": [asdict(c) for c in CONFIGS], "unix_time": int(time.time())},
            "results": [asdict(r) for r in results],
            "added_avg_latency_1c_us": {t: added_latency_us(results, t) for t in ("clidash", "bytepipe", "pgbouncer")},
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
