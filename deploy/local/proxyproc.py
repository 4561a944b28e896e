"""The CLIDash proxy as a subprocess on a free port: used by the tests, the demo
and the benchmarks so they all start it the same way."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import quote

from pgcluster import PgCluster
from procutil import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000


class ProxyStartError(RuntimeError):
    """The proxy exited or did not listen in time; the message carries its log tail."""


@dataclass
class ProxyProcess:
    process: subprocess.Popen
    host: str
    port: int
    log_path: Path
    cluster: PgCluster
    mode: str
    _log_file: object = field(default=None, repr=False)
    metrics_port: int | None = None    # /metrics, /livez, /readyz, /startup on host

    def metrics_url(self, path: str = "/metrics") -> str:
        return f"http://{self.host}:{self.metrics_port}{path}"

    def dsn(self, user: str | None = None, password: str | None = None, dbname: str | None = None) -> str:
        """A DSN for the proxy; user, password and database default to the primary's."""
        primary = self.cluster.primary
        user = primary.user if user is None else user
        password = primary.password if password is None else password
        dbname = primary.dbname if dbname is None else dbname
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def launch_proxy(cluster: PgCluster, mode: str = "EVENTUAL", extra_args: Sequence[str] = (),
                 log_dir: Path | str | None = None, service: str = "test",
                 timeout: float = START_TIMEOUT_S) -> ProxyProcess:
    """Start `python -m clidash proxy` in front of cluster and wait until it accepts TCP."""
    host, port, metrics_port = "127.0.0.1", free_port(), free_port()
    cmd = [sys.executable, "-m", "clidash", "proxy", "--protocol", "postgresql",
           "--listen", f"{host}:{port}", "--primary", cluster.primary.dsn,
           "--metrics-listen", f"{host}:{metrics_port}"]   # not the shared default 9464: many run at once
    for replica in cluster.replicas:
        cmd += ["--replica", replica.dsn]
    cmd += ["--service", service, "--mode", mode]
    if not any(a in ("--udp-listen", "--no-udp") or a.startswith("--udp-listen=") for a in extra_args):
        cmd.append("--no-udp")   # the default UDP port 5775 is shared: many proxies run at once
    cmd += list(extra_args)
    log_path = Path(log_dir or cluster.base_dir or "/tmp") / f"proxy-{port}.log"
    log_file = open(log_path, "wb")
    log_file.write(("$ " + " ".join(cmd) + "\n").encode())
    log_file.flush()
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    proxy = ProxyProcess(process, host, port, log_path, cluster, mode, log_file, metrics_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            proxy.stop()
            raise ProxyStartError(f"proxy exited with code {process.returncode} before listening; "
                                  f"log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return proxy
        except OSError:
            time.sleep(0.05)
    proxy.stop()
    raise ProxyStartError(f"proxy did not accept TCP on {host}:{port} within {timeout:.0f}s; "
                          f"log tail:\n{proxy.log_text()[-LOG_TAIL_CHARS:]}")
