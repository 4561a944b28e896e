"""Throwaway Redis for tests, demos and benches.

`acquire_redis` tries, in order:

1. CLIDASH_TEST_REDIS_URL (a Redis someone else runs; tests FLUSHALL it);
2. testcontainers, only when a Docker engine answers (checked cheaply first);
3. `redis-server` from PATH on a free port, no persistence, in a temp directory.

Importable as a plain module (no package), and runnable by hand:

    python deploy/local/redisserver.py up

prints the URL and keeps the server up until Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from procutil import free_port, stop_process  # noqa: F401  (free_port is used by callers too)

START_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 2000


class RedisServerError(RuntimeError):
    """A Redis server could not be started or did not answer PING."""


@dataclass
class RedisServer:
    host: str
    port: int
    source: str = "local"  # "local" | "env" | "testcontainers"
    db: int = 0
    password: str | None = None
    pid: int | None = None  # the redis-server process, when we started it locally
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"

    def stop(self) -> None:
        """Stop what we started (nothing for env servers); safe to call twice."""
        with self._lock:
            cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep tearing down the rest
                print(f"redisserver: cleanup step failed: {exc!r}", file=sys.stderr)

    def __enter__(self) -> "RedisServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def ping(host: str, port: int, timeout: float = 0.5, password: str | None = None) -> bool:
    """True when a Redis on host:port answers PING (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()[-LOG_TAIL_CHARS:] or "(log is empty)"
    except OSError as exc:
        return f"(log unreadable: {exc})"


# --------------------------------------------------------------------------- local binary


def start_local_redis(port: int | None = None, host: str = "127.0.0.1", attempts: int = 3) -> RedisServer:
    """redis-server on `port` (default: a free one), no persistence, in its own temp dir.

    Passing the port of a server stopped earlier brings a Redis back at the same address
    (empty: nothing is persisted), which is how tests simulate an outage and recovery.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError("redis-server not found on PATH; install it (Debian: apt-get install redis-server) "
                               "or point CLIDASH_TEST_REDIS_URL at a running Redis")
    for attempt in range(1, attempts + 1):
        chosen = port or free_port(host)
        workdir = tempfile.mkdtemp(prefix="clidash-redis-")
        log_path = os.path.join(workdir, "redis.log")
        cmd = [binary, "--port", str(chosen), "--bind", host, "--save", "", "--appendonly", "no",
               "--dir", workdir, "--logfile", log_path, "--daemonize", "no", "--protected-mode", "no"]
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        server = RedisServer(host, chosen, source="local", pid=process.pid)
        server._cleanups.append(lambda d=workdir: shutil.rmtree(d, ignore_errors=True))
        server._cleanups.append(lambda p=process: stop_process(p))
        atexit.register(server.stop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if ping(host, chosen):
                return server
            time.sleep(0.02)
        log = _tail(log_path)
        server.stop()
        if port is None and attempt < attempts and "Address already in use" in log:
            continue  # someone took the free port first; try another
        raise RedisServerError(f"redis-server on {host}:{chosen} did not answer PING within {START_TIMEOUT_S:.0f}s "
                               f"(exit code {process.poll()}); log tail:\n{log}")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- environment / containers


def redis_from_env() -> RedisServer | None:
    url = os.environ.get("CLIDASH_TEST_REDIS_URL", "").strip()
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    return RedisServer(parts.hostname or "127.0.0.1", parts.port or 6379, source="env", db=db,
                       password=parts.password)


def _docker_answers(timeout: float = 2.0) -> bool:
    if os.environ.get("CLIDASH_TEST_DOCKER", "").lower() in ("0", "no", "false", "off"):
        return False
    # Cheap check first so the local path never waits on a Docker client timeout.
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
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


def redis_from_testcontainers(image: str = "redis:7") -> RedisServer | None:
    """A Redis container; None when no Docker engine answers. Best effort."""
    if not _docker_answers():
        return None
    try:
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(image).with_exposed_ports(6379).with_command(
            "redis-server --save '' --appendonly no")
        container.start()
        server = RedisServer(container.get_container_host_ip(), int(container.get_exposed_port(6379)),
                             source="testcontainers")
        server._cleanups.append(container.stop)
        atexit.register(server.stop)
        deadline = time.monotonic() + 60
        while not ping(server.host, server.port):
            if time.monotonic() > deadline:
                server.stop()
                raise RedisServerError("the Redis container did not answer PING within 60s")
            time.sleep(0.1)
        return server
    except Exception as exc:
        print(f"redisserver: testcontainers path failed, falling back: {exc!r}", file=sys.stderr)
        return None


def acquire_redis() -> RedisServer:
    """Env URL, then testcontainers (if Docker answers), then the local redis-server."""
    return redis_from_env() or redis_from_testcontainers() or start_local_redis()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway Redis")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a Redis, print its URL, keep it up until signalled")
    up.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        server = start_local_redis(port=args.port)
    except RedisServerError as exc:
        print(f"redisserver: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(server.url, flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
