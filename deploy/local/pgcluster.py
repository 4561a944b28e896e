"""Throwaway PostgreSQL primary + streaming hot-standby replicas for tests, demos and benches.

Three ways to get a cluster, tried in this order by `acquire_cluster`:

1. DSNs from the environment (CLIDASH_TEST_PG_PRIMARY, CLIDASH_TEST_PG_REPLICAS);
2. testcontainers, only when a Docker engine answers a ping;
3. servers started from the locally installed binaries (initdb, pg_ctl,
   pg_basebackup) on free ports in a temporary directory.

Importable as a plain module (no package), and runnable by hand:

    python deploy/local/pgcluster.py up --replicas 1

prints the DSNs as JSON and keeps the cluster up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import concurrent.futures
import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from procutil import free_port  # noqa: F401  (re-exported: tests import it from here)

PG_OS_USER = "postgres"  # initdb/pg_ctl refuse to run as root; this user runs them then
START_TIMEOUT_S = 60
REPLICA_SYNC_TIMEOUT_S = 30
LOG_TAIL_LINES = 40
PROBE_TABLE = "clidash_replication_probe"  # lives in the `postgres` db, not the user's


class PgClusterError(RuntimeError):
    """A cluster could not be started or did not become ready."""


# --------------------------------------------------------------------------- model


@dataclass
class PgServer:
    role: str  # "primary" | "replica"
    host: str
    port: int
    user: str
    password: str
    dbname: str
    datadir: str | None = None  # None when not managed by us (env/testcontainers)
    socket_dir: str | None = None  # unix socket dir of a local server (trust auth)
    log_path: str | None = None

    @property
    def dsn(self) -> str:
        user = urllib.parse.quote(self.user, safe="")
        password = urllib.parse.quote(self.password, safe="")
        dbname = urllib.parse.quote(self.dbname, safe="")
        auth = f"{user}:{password}@" if self.password else f"{user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{dbname}"

    @classmethod
    def from_dsn(cls, dsn: str, role: str) -> "PgServer":
        url = urllib.parse.urlsplit(dsn)
        if url.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"not a postgresql:// DSN: {dsn!r}")
        return cls(
            role=role,
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=urllib.parse.unquote(url.username or "postgres"),
            password=urllib.parse.unquote(url.password or ""),
            dbname=urllib.parse.unquote(url.path.lstrip("/")) or "postgres",
        )


@dataclass
class PgCluster:
    primary: PgServer
    replicas: list[PgServer] = field(default_factory=list)
    source: str = "local"  # "local" | "env" | "testcontainers"
    base_dir: str | None = None
    # Undo steps, run last-registered first by stop().
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def servers(self) -> list[PgServer]:
        return [self.primary, *self.replicas]

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "primary": self.primary.dsn,
            "replicas": [r.dsn for r in self.replicas],
            "base_dir": self.base_dir,
        }

    def wait_for_replicas(self, timeout: float = 60.0) -> None:
        """Block until every replica has replayed all WAL the primary has written so far."""
        _run_coro(_wait_replicas_caught_up(self.primary, self.replicas, timeout))

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep tearing down the rest
                print(f"pgcluster: cleanup step failed: {exc!r}", file=sys.stderr)

    def __enter__(self) -> "PgCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- helpers


def _running_as_root() -> bool:
    return os.geteuid() == 0


def as_pg_os_user(cmd: list[str]) -> list[str]:
    """Prefix `cmd` so it runs as the postgres OS user when we are root."""
    if not _running_as_root():
        return cmd
    return ["runuser", "-u", PG_OS_USER, "--", *cmd]


def chown_to_pg_os_user(path: str) -> None:
    """Give `path` to the postgres OS user when we are root (no-op otherwise)."""
    if not _running_as_root():
        return
    entry = _pg_os_user_entry()
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg_os_user_entry() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise PgClusterError(
            f"running as root but there is no {PG_OS_USER!r} OS user to run PostgreSQL as; "
            f"create one or run as an unprivileged user"
        ) from None


def _version_key(bindir: str) -> tuple[int, ...]:
    version = os.path.basename(os.path.dirname(bindir))
    return tuple(int(part) for part in re.findall(r"\d+", version)) or (0,)


def find_pg_bindir() -> str:
    """Directory holding initdb/pg_ctl/pg_basebackup: highest /usr/lib/postgresql/*/bin, else pg_config."""
    candidates = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.isfile(os.path.join(d, "initdb"))]
    if candidates:
        return max(candidates, key=_version_key)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = out.stdout.strip()
        if out.returncode == 0 and os.path.isfile(os.path.join(bindir, "initdb")):
            return bindir
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise PgClusterError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin, "
        "`pg_config --bindir` and PATH); install them, e.g. `apt-get install postgresql`, "
        "or point CLIDASH_TEST_PG_PRIMARY/CLIDASH_TEST_PG_REPLICAS at running servers"
    )


def _tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    if not path:
        return "(no log)"
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]) or "(log is empty)"
    except OSError as exc:
        return f"(log unreadable: {exc})"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None, log_path: str | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command, raising PgClusterError with its output (and a log tail) on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise PgClusterError(f"{what} timed out after {timeout}s\nlog tail:\n{_tail(log_path)}") from exc
    if proc.returncode != 0:
        message = f"{what} failed (exit {proc.returncode})\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
        if log_path:
            message += f"\nlog tail ({log_path}):\n{_tail(log_path)}"
        raise PgClusterError(message)
    return proc


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    # standard_conforming_strings is on (the default), so only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


# --------------------------------------------------------------------------- SQL (asyncpg)


def _run_coro(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even if the caller is inside an event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _connect(server: PgServer, dbname: str | None = None, over_socket: bool = False) -> Any:
    import asyncpg  # deferred: only needed once a server is up

    if over_socket and server.socket_dir:
        # Local admin path: trust auth on the unix socket, independent of the password setup.
        return await asyncpg.connect(host=server.socket_dir, port=server.port, user=server.user,
                                     database=dbname or server.dbname, timeout=10)
    return await asyncpg.connect(host=server.host, port=server.port, user=server.user,
                                 password=server.password or None, database=dbname or server.dbname,
                                 timeout=10, ssl=False)


async def _admin_setup(primary: PgServer) -> None:
    """Re-store the password under the configured password_encryption and create the database."""
    conn = await _connect(primary, dbname="postgres", over_socket=True)
    try:
        # initdb hashed the pwfile password with the built-in default; re-setting it here makes
        # the stored verifier match password_encryption (matters for md5).
        await conn.execute(f"ALTER ROLE {_quote_ident(primary.user)} PASSWORD {_quote_literal(primary.password)}")
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", primary.dbname)
        if not exists:
            await conn.execute(f"CREATE DATABASE {_quote_ident(primary.dbname)}")
    finally:
        await conn.close()


async def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call async `check` until it returns a truthy value; errors count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise PgClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        await asyncio.sleep(0.1)


async def _fetchval(server: PgServer, sql: str, *args: Any, dbname: str | None = None) -> Any:
    conn = await _connect(server, dbname=dbname)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def _wait_streaming(primary: PgServer, replica: PgServer, timeout: float) -> None:
    """Replica is a hot standby and shows a row just written on the primary (checked over TCP)."""
    await _poll(lambda: _fetchval(replica, "SELECT pg_is_in_recovery()"), timeout,
                f"replica on port {replica.port} to accept connections in recovery")
    token = secrets.token_hex(8)
    conn = await _connect(primary, dbname="postgres")
    try:
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (token text PRIMARY KEY, at timestamptz DEFAULT now())")
        await conn.execute(f"INSERT INTO {PROBE_TABLE} (token) VALUES ($1)", token)
    finally:
        await conn.close()
    await _poll(lambda: _fetchval(replica, f"SELECT count(*) FROM {PROBE_TABLE} WHERE token = $1", token,
                                  dbname="postgres"),
                timeout, f"a row written on the primary to appear on the replica on port {replica.port}")


async def _wait_replicas_caught_up(primary: PgServer, replicas: list[PgServer], timeout: float) -> None:
    target_lsn = await _fetchval(primary, "SELECT pg_current_wal_insert_lsn()::text")
    for replica in replicas:
        await _poll(
            lambda: _fetchval(replica, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", target_lsn),
            timeout, f"replica on port {replica.port} to replay up to {target_lsn}")


# --------------------------------------------------------------------------- local binaries


def _server_conf(auth_method: str) -> str:
    password_encryption = "md5" if auth_method == "md5" else "scram-sha-256"
    return f"""
# --- clidash throwaway cluster settings ---
listen_addresses = '127.0.0.1'
include_if_exists = 'clidash_instance.conf'   # port + socket dir, differs per server
password_encryption = '{password_encryption}'
max_connections = 200
shared_buffers = 32MB
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 128MB
hot_standby = on
hot_standby_feedback = on
wal_receiver_status_interval = 1s
max_standby_streaming_delay = 30s
# durability is worthless for a throwaway cluster; speed is not. synchronous_commit
# stays on: with fsync off it costs one write(), and commits reach the standby at
# once, as from a real primary, not up to 3 x wal_writer_delay later.
fsync = off
synchronous_commit = on
full_page_writes = off
log_line_prefix = '%m [%p] %q%u@%d '
"""


def _hba_conf(auth_method: str) -> str:
    return f"""# clidash throwaway cluster: trust on the private unix socket, passwords over TCP
local   all           all                  trust
local   replication   all                  trust
host    all           all   127.0.0.1/32   {auth_method}
host    replication   all   127.0.0.1/32   {auth_method}
"""


class _LocalBuilder:
    """Creates the on-disk servers of a local cluster; every step registers its undo on the cluster."""

    def __init__(self, cluster: PgCluster, bindir: str, auth_method: str):
        self.cluster = cluster
        self.bindir = bindir
        self.auth_method = auth_method

    def _bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    def _server_dirs(self, name: str) -> tuple[str, str, str]:
        home = os.path.join(self.cluster.base_dir, name)
        socket_dir = os.path.join(home, "run")
        for path in (home, socket_dir):
            os.makedirs(path, mode=0o700, exist_ok=True)
            chown_to_pg_os_user(path)
        return os.path.join(home, "data"), socket_dir, os.path.join(home, "postgres.log")

    def _write_instance_conf(self, server: PgServer) -> None:
        path = os.path.join(server.datadir, "clidash_instance.conf")
        with open(path, "w") as fh:
            fh.write(f"port = {server.port}\nunix_socket_directories = '{server.socket_dir}'\n")
        chown_to_pg_os_user(path)

    def init_primary(self, user: str, password: str, dbname: str) -> PgServer:
        datadir, socket_dir, log_path = self._server_dirs("primary")
        server = PgServer("primary", "127.0.0.1", 0, user, password, dbname, datadir, socket_dir, log_path)
        pwfile = os.path.join(self.cluster.base_dir, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(password + "\n")
        chown_to_pg_os_user(pwfile)
        try:
            _run(as_pg_os_user([
                self._bin("initdb"), "-D", datadir, "-U", user, f"--pwfile={pwfile}",
                "--auth-local=trust", f"--auth-host={self.auth_method}",
                "-E", "UTF8", "--locale=C", "--no-sync",
            ]), "initdb")
        finally:
            os.unlink(pwfile)
        with open(os.path.join(datadir, "postgresql.conf"), "a") as fh:
            fh.write(_server_conf(self.auth_method))
        with open(os.path.join(datadir, "pg_hba.conf"), "w") as fh:
            fh.write(_hba_conf(self.auth_method))
        self.start(server)
        _run_coro(_admin_setup(server))
        return server

    def clone_replica(self, primary: PgServer, index: int) -> PgServer:
        datadir, socket_dir, log_path = self._server_dirs(f"replica{index}")
        server = PgServer("replica", "127.0.0.1", 0, primary.user, primary.password, primary.dbname,
                          datadir, socket_dir, log_path)
        # PGPASSWORD reaches pg_basebackup through runuser; -R records it in primary_conninfo.
        env = {**os.environ, "PGPASSWORD": primary.password}
        _run(as_pg_os_user([
            self._bin("pg_basebackup"), "-D", datadir, "-h", primary.host, "-p", str(primary.port),
            "-U", primary.user, "-R", "-X", "stream", "-c", "fast", "--no-sync",
        ]), f"pg_basebackup for replica{index}", env=env)
        self.start(server)
        _run_coro(_wait_streaming(primary, server, REPLICA_SYNC_TIMEOUT_S))
        return server

    def start(self, server: PgServer, attempts: int = 3) -> None:
        """pg_ctl start on a fresh free port; retries with another port if someone grabbed it."""
        for attempt in range(1, attempts + 1):
            server.port = free_port()
            self._write_instance_conf(server)
            try:
                _run(as_pg_os_user([
                    self._bin("pg_ctl"), "-D", server.datadir, "-l", server.log_path,
                    "-w", "-t", str(START_TIMEOUT_S), "start",
                ]), f"starting {server.role} on port {server.port}", log_path=server.log_path,
                    timeout=START_TIMEOUT_S + 10)
            except PgClusterError as exc:
                port_taken = "could not bind" in _tail(server.log_path) or "already in use" in str(exc)
                if attempt < attempts and port_taken:
                    continue
                raise
            self.cluster._cleanups.append(lambda s=server: self.stop_server(s))
            return

    def stop_server(self, server: PgServer) -> None:
        if not os.path.isfile(os.path.join(server.datadir, "postmaster.pid")):
            return
        subprocess.run(as_pg_os_user([self._bin("pg_ctl"), "-D", server.datadir, "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60, check=False)


def _prepare_base_dir(base_dir: str | None, cluster: PgCluster) -> str:
    if base_dir is None:
        base_dir = tempfile.mkdtemp(prefix="clidash-pg-")
        owned = base_dir
    else:
        base_dir = os.path.abspath(base_dir)
        os.makedirs(base_dir, exist_ok=True)
        # Keep the caller's directory; we own (and later delete) only our fresh subdirectory.
        owned = base_dir = tempfile.mkdtemp(prefix="clidash-pg-", dir=base_dir)
    cluster._cleanups.append(lambda: shutil.rmtree(owned, ignore_errors=True))
    os.chmod(base_dir, 0o700)
    chown_to_pg_os_user(base_dir)
    if _running_as_root():
        probe = subprocess.run(as_pg_os_user(["test", "-w", base_dir, "-a", "-x", base_dir]), check=False)
        if probe.returncode != 0:
            raise PgClusterError(
                f"the {PG_OS_USER!r} OS user cannot reach {base_dir}; choose a base_dir whose parents "
                f"are world-searchable (e.g. under /tmp)")
    return base_dir


def start_local_cluster(replicas: int = 1, user: str = "clidash", password: str = "clidash-pw",
                        dbname: str = "clidash", auth_method: str = "scram-sha-256",
                        base_dir: str | None = None) -> PgCluster:
    """Start a primary and `replicas` streaming hot standbys from the local PostgreSQL binaries."""
    bindir = find_pg_bindir()
    placeholder = PgServer("primary", "127.0.0.1", 0, user, password, dbname)
    cluster = PgCluster(primary=placeholder, source="local")
    # If the interpreter exits without stop(), don't leave postgres processes behind.
    atexit.register(cluster.stop)
    try:
        cluster.base_dir = _prepare_base_dir(base_dir, cluster)
        builder = _LocalBuilder(cluster, bindir, auth_method)
        cluster.primary = builder.init_primary(user, password, dbname)
        for index in range(1, replicas + 1):
            cluster.replicas.append(builder.clone_replica(cluster.primary, index))
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --------------------------------------------------------------------------- environment


def cluster_from_env() -> PgCluster | None:
    """Servers someone else runs: CLIDASH_TEST_PG_PRIMARY=<dsn>, CLIDASH_TEST_PG_REPLICAS=<dsn>,<dsn>."""
    primary_dsn = os.environ.get("CLIDASH_TEST_PG_PRIMARY", "").strip()
    if not primary_dsn:
        return None
    replica_dsns = [d.strip() for d in os.environ.get("CLIDASH_TEST_PG_REPLICAS", "").split(",") if d.strip()]
    return PgCluster(
        primary=PgServer.from_dsn(primary_dsn, "primary"),
        replicas=[PgServer.from_dsn(d, "replica") for d in replica_dsns],
        source="env",
    )


# --------------------------------------------------------------------------- testcontainers


def _docker_answers(timeout: float = 2.0) -> bool:
    if os.environ.get("CLIDASH_TEST_DOCKER", "").lower() in ("0", "no", "false", "off"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def cluster_from_testcontainers(replicas: int = 1, user: str = "clidash", password: str = "clidash-pw",
                                dbname: str = "clidash", image: str = "postgres:15") -> PgCluster | None:
    """Primary + standby containers; None when no Docker engine answers. Best effort."""
    if not _docker_answers():
        return None
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.network import Network
    except Exception:
        return None

    cluster = PgCluster(primary=PgServer("primary", "127.0.0.1", 0, user, password, dbname),
                        source="testcontainers")
    atexit.register(cluster.stop)
    try:
        network = Network()
        network.create()
        cluster._cleanups.append(network.remove)
        settings = ["-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "hot_standby=on",
                    "-c", "hot_standby_feedback=on", "-c", "fsync=off", "-c", "synchronous_commit=on",
                    "-c", "max_connections=200", "-c", "wal_receiver_status_interval=1s",
                    "-c", "max_standby_streaming_delay=30s", "-c", "shared_buffers=32MB"]
        # The official image's pg_hba.conf has no replication line for other hosts; add one at init.
        allow_replication = ("echo 'echo \"host replication all all scram-sha-256\" >> \"$PGDATA/pg_hba.conf\"'"
                             " > /docker-entrypoint-initdb.d/10-replication.sh")
        primary_c = (
            DockerContainer(image)
            .with_env("POSTGRES_USER", user).with_env("POSTGRES_PASSWORD", password).with_env("POSTGRES_DB", dbname)
            .with_network(network).with_network_aliases("pg-primary").with_exposed_ports(5432)
            .with_kwargs(entrypoint=["bash", "-c"])
            .with_command([f"{allow_replication} && exec docker-entrypoint.sh postgres {' '.join(settings)}"])
        )
        primary_c.start()
        cluster._cleanups.append(primary_c.stop)
        cluster.primary = PgServer("primary", primary_c.get_container_host_ip(),
                                   int(primary_c.get_exposed_port(5432)), user, password, dbname)
        # The entrypoint restarts the server once after init; wait for the final one to take writes.
        _run_coro(_poll(lambda: _fetchval(cluster.primary, "SELECT NOT pg_is_in_recovery()"), 90,
                        "the primary container"))
        for index in range(1, replicas + 1):
            clone = (
                "rm -rf \"$PGDATA\"/* && "
                f"until gosu postgres env PGPASSWORD={_shell_quote(password)} pg_basebackup -h pg-primary "
                f"-U {_shell_quote(user)} -D \"$PGDATA\" -R -X stream -c fast; do sleep 1; done && "
                # Same settings as the primary: a standby refuses to start with a lower max_connections.
                f"chmod 700 \"$PGDATA\" && exec gosu postgres postgres -D \"$PGDATA\" {' '.join(settings)}"
            )
            replica_c = (
                DockerContainer(image).with_network(network).with_exposed_ports(5432)
                .with_kwargs(entrypoint=["bash", "-c"]).with_command([clone])
            )
            replica_c.start()
            cluster._cleanups.append(replica_c.stop)
            replica = PgServer("replica", replica_c.get_container_host_ip(), int(replica_c.get_exposed_port(5432)),
                               user, password, dbname)
            _run_coro(_wait_streaming(cluster.primary, replica, 90))
            cluster.replicas.append(replica)
    except Exception as exc:
        cluster.stop()
        print(f"pgcluster: testcontainers path failed, falling back: {exc!r}", file=sys.stderr)
        return None
    return cluster


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------- entry points


def acquire_cluster(replicas: int = 1) -> PgCluster:
    """Env DSNs, then testcontainers (if Docker answers), then local binaries."""
    return cluster_from_env() or cluster_from_testcontainers(replicas=replicas) or start_local_cluster(replicas=replicas)


def _serve_until_signalled(cluster: PgCluster) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(json.dumps(cluster.as_dict(), indent=2), flush=True)
    print("cluster up; Ctrl-C or SIGTERM tears it down", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway PostgreSQL primary + hot standbys")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster, print its DSNs as JSON, keep it up until signalled")
    up.add_argument("--replicas", type=int, default=1)
    up.add_argument("--user", default="clidash")
    up.add_argument("--password", default="clidash-pw")
    up.add_argument("--dbname", default="clidash")
    up.add_argument("--auth-method", default="scram-sha-256", choices=["scram-sha-256", "md5", "password", "trust"])
    up.add_argument("--base-dir", default=None)
    args = parser.parse_args(argv)

    try:
        cluster = start_local_cluster(replicas=args.replicas, user=args.user, password=args.password,
                                      dbname=args.dbname, auth_method=args.auth_method, base_dir=args.base_dir)
    except PgClusterError as exc:
        print(f"pgcluster: {exc}", file=sys.stderr)
        return 1
    with cluster:
        _serve_until_signalled(cluster)
    return 0


if __name__ == "__main__":
    sys.exit(main())
