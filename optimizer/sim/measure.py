"""Re-measure the simulator's calibration against a real primary + replica.

    python deploy/local/pgcluster.py up --replicas 1      # prints DSNs
    python -m clidash.optimizer.sim.measure PRIMARY_DSN REPLICA_DSN [seconds]

Prints JSON: round-trip percentiles (ms) for a point SELECT on the primary and on
the replica, a single-row UPDATE (autocommit) on the primary, and the
write-to-replica visibility delay (ms). Numbers are sequential, one connection
each, so they approximate unloaded service time + client/network overhead.
Copy the medians into calibration.py and note the date/machine there.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _summary(xs: list[float]) -> dict:
    return {"n": len(xs), "mean": round(statistics.fmean(xs), 4), "p50": round(_pct(xs, 0.5), 4),
            "p99": round(_pct(xs, 0.99), 4), "stdev": round(statistics.pstdev(xs), 4)}


async def _timed(conn, sql: str, args: tuple, seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        i += 1
        t0 = time.perf_counter()
        await conn.fetchrow(sql, *args(i)) if callable(args) else await conn.fetchrow(sql, *args)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


async def main(primary: str, replica: str, seconds: float) -> dict:
    import asyncpg  # only needed for measuring, not for simulating

    p = await asyncpg.connect(primary)
    r = await asyncpg.connect(replica)
    await p.execute("CREATE TABLE IF NOT EXISTS sim_cal (id int primary key, v bigint not null default 0)")
    await p.execute("INSERT INTO sim_cal SELECT g, 0 FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING")
    await asyncio.sleep(1.0)  # let the replica replay the table
    sel = "SELECT v FROM sim_cal WHERE id = $1"
    upd = "UPDATE sim_cal SET v = v + 1 WHERE id = $1 RETURNING v"
    res = {
        "primary_read_ms": _summary(await _timed(p, sel, lambda i: (i % 1000 + 1,), seconds)),
        "replica_read_ms": _summary(await _timed(r, sel, lambda i: (i % 1000 + 1,), seconds)),
        "write_ms": _summary(await _timed(p, upd, lambda i: (i % 1000 + 1,), seconds)),
    }
    # Visibility delay: write a marker on the primary, poll the replica until it shows.
    vis: list[float] = []
    end = time.perf_counter() + seconds
    k = 0
    while time.perf_counter() < end:
        k += 1
        row = await p.fetchrow("UPDATE sim_cal SET v = v + 1 WHERE id = 1 RETURNING v")
        t0 = time.perf_counter()
        while (await r.fetchval("SELECT v FROM sim_cal WHERE id = 1")) < row["v"]:
            if time.perf_counter() - t0 > 5:
                break
        vis.append((time.perf_counter() - t0) * 1000.0)
        await asyncio.sleep(0.01)
    res["replica_visibility_ms"] = _summary(vis)
    await p.close()
    await r.close()
    return res


if __name__ == "__main__":
    secs = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], secs)), indent=2))
