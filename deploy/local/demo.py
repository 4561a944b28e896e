"""`make demo`: the whole system on this machine, from the installed binaries.

Starts a throwaway PostgreSQL primary + hot standby, the CLIDash proxy in
EVENTUAL mode in front of them, runs a short mixed workload through the proxy
(reads, writes, a transaction, a read-only transaction, prepared statements),
prints how many statements each server ran, and cleans everything up.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402

import pgcluster  # noqa: E402

WORKLOAD_CLIENTS = 4
ROUNDS = 200


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy exited early:\n{log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"proxy did not start listening:\n{log_path.read_text()[-3000:]}")


async def committed_transactions(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()


async def workload(proxy_dsn: str) -> dict:
    setup = await asyncpg.connect(proxy_dsn)
    await setup.execute("CREATE TABLE IF NOT EXISTS demo_orders (id serial PRIMARY KEY, item text, qty int)")
    await setup.close()
    await asyncio.sleep(0.5)   # let the standby replay the DDL
    counts = {"reads": 0, "writes": 0, "transactions": 0}

    async def client(n: int) -> None:
        conn = await asyncpg.connect(proxy_dsn)
        try:
            for i in range(ROUNDS):
                if i % 10 == 0:
                    await conn.execute("INSERT INTO demo_orders (item, qty) VALUES ($1, $2)", f"item-{n}", i)
                    counts["writes"] += 1
                elif i % 25 == 1:
                    async with conn.transaction():
                        await conn.execute("UPDATE demo_orders SET qty = qty + 1 WHERE item = $1", f"item-{n}")
                        await conn.fetchval("SELECT count(*) FROM demo_orders")
                    counts["transactions"] += 1
                elif i % 25 == 2:
                    async with conn.transaction(readonly=True):
                        await conn.fetchval("SELECT sum(qty) FROM demo_orders")
                    counts["transactions"] += 1
                else:
                    await conn.fetch("SELECT id, qty FROM demo_orders WHERE item = $1 LIMIT 5", f"item-{n}")
                    counts["reads"] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(client(n) for n in range(WORKLOAD_CLIENTS)))
    return counts


def main() -> int:
    print("starting a throwaway PostgreSQL primary + hot standby ...", flush=True)
    with pgcluster.start_local_cluster(replicas=1) as cluster:
        port = pgcluster.free_port()
        log_path = Path(cluster.base_dir if hasattr(cluster, "base_dir") else "/tmp") / "proxy.log"
        cmd = [sys.executable, "-m", "clidash", "proxy", "--protocol", "postgresql",
               "--listen", f"127.0.0.1:{port}", "--primary", cluster.primary.dsn,
               "--replica", cluster.replicas[0].dsn, "--service", "demo", "--mode", "EVENTUAL"]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            wait_for_port(port, proc, log_path)
            primary, replica = cluster.primary, cluster.replicas[0]
            proxy_dsn = f"postgresql://{primary.user}:{primary.password}@127.0.0.1:{port}/{primary.dbname}"
            print(f"proxy listening on 127.0.0.1:{port} (mode EVENTUAL)")
            before = (asyncio.run(committed_transactions(primary.dsn)),
                      asyncio.run(committed_transactions(replica.dsn)))
            counts = asyncio.run(workload(proxy_dsn))
            time.sleep(1.5)   # backends flush their statistics at exit; give them a moment
            after = (asyncio.run(committed_transactions(primary.dsn)),
                     asyncio.run(committed_transactions(replica.dsn)))
            print(f"workload: {WORKLOAD_CLIENTS} clients; {counts['reads']} reads, {counts['writes']} writes, "
                  f"{counts['transactions']} transactions")
            # The counting queries themselves add one commit each on either side.
            print(f"transactions committed on the primary ({primary.host}:{primary.port}): {after[0] - before[0] - 1}")
            print(f"transactions committed on the standby ({replica.host}:{replica.port}): {after[1] - before[1] - 1}")
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("cleaned up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
