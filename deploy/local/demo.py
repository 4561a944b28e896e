"""`make demo`: the whole system on this machine, from the installed binaries.

Starts a throwaway PostgreSQL primary + hot standby, the CLIDash proxy in
EVENTUAL mode in front of them, runs a short mixed workload through the proxy
(reads, writes, a transaction, a read-only transaction, prepared statements),
prints how many statements each server ran, and cleans everything up.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402

import pgcluster  # noqa: E402
from proxyproc import launch_proxy  # noqa: E402

WORKLOAD_CLIENTS = 4
ROUNDS = 200


def statements_by_target(metrics_url: str) -> dict:
    """What the proxy itself counted, per target role, from its /metrics."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(metrics_url, timeout=5).read().decode()
    counts: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name == "db_client_operation_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    role = sample.labels["target_role"]
                    counts[role] = counts.get(role, 0) + int(sample.value)
    return counts


async def table_activity(dsn: str) -> tuple[int, int]:
    """(scans, rows written) of demo_orders as this server counted them: its own statistics,
    so the proxy's monitoring queries do not blur the picture."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT seq_scan + coalesce(idx_scan, 0) AS scans, n_tup_ins + n_tup_upd AS written "
            "FROM pg_stat_user_tables WHERE relname = 'demo_orders'")
        return (row["scans"], row["written"]) if row else (0, 0)
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
        proxy = launch_proxy(cluster, "EVENTUAL", service="demo")
        try:
            primary, replica = cluster.primary, cluster.replicas[0]
            proxy_dsn = proxy.dsn()
            print(f"proxy listening on {proxy.host}:{proxy.port} (mode EVENTUAL); metrics at {proxy.metrics_url()}")
            counts = asyncio.run(workload(proxy_dsn))
            time.sleep(1.5)   # backends flush their statistics at exit; give them a moment
            on_primary = asyncio.run(table_activity(primary.dsn))
            on_standby = asyncio.run(table_activity(replica.dsn))
            print(f"workload: {WORKLOAD_CLIENTS} clients; {counts['reads']} reads, {counts['writes']} writes, "
                  f"{counts['transactions']} transactions (half of them read-only)")
            routed = statements_by_target(proxy.metrics_url())
            print(f"statements the proxy sent: {routed.get('primary', 0)} to the primary, "
                  f"{routed.get('replica', 0)} to the standby")
            print("what each server ran on demo_orders, by its own statistics:")
            print(f"  primary ({primary.host}:{primary.port}): {on_primary[0]} scans, {on_primary[1]} rows inserted or updated")
            print(f"  standby ({replica.host}:{replica.port}): {on_standby[0]} scans, {on_standby[1]} rows inserted or updated")
        finally:
            proxy.stop()
    print("cleaned up")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
