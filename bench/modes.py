"""What each consistency mode costs and buys, in one run on this machine.

1. pgbench -S (select-only, 16 clients, prepared) through the proxy in each
   mode; tps relative to EVENTUAL. (The goal: READ_YOUR_WRITES and BOUNDED
   within 5% of EVENTUAL.)
2. The read-after-write checker (deploy/local/read_after_write.py) through the
   proxy in each mode, with the standby's replay paused mid-run: share of reads
   the replica served, stale reads of a session's own writes, worst staleness.

Usage: python bench/modes.py [--duration 10] [--json FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy" / "local"))

import pgbench_compare as pc  # noqa: E402
from read_after_write import run_check  # noqa: E402

MODES = ["EVENTUAL", "READ_YOUR_WRITES", "BOUNDED:250", "STRONG"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--primary")
    parser.add_argument("--replica", action="append", default=[])
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    cluster = pc.cluster_from_args(args)
    results = {}
    try:
        pc.prepare_cluster(cluster, args.scale)
        config = pc.BenchConfig("16c prepared", 16, 2, "prepared")
        p = cluster.primary
        with tempfile.TemporaryDirectory(prefix="clidash-modes-") as tmp:
            workdir = Path(tmp)
            for mode in MODES:
                with pc.clidash_target(cluster, workdir, ["--mode", mode]) as (host, port):
                    bench = pc.run_pgbench(config, "clidash", host, port, p, args.duration, workdir)
                    check = asyncio.run(run_check(f"postgresql://{p.user}:{p.password}@{host}:{port}/{p.dbname}",
                                                  p.dsn, cluster.replicas[0].dsn, sessions=8, duration_s=4.0,
                                                  pause_s=(1.0, 3.0)))
                results[mode] = {"tps": bench.tps, "note": bench.note, "reads": check.reads,
                                 "replica_share": check.replica_share, "stale_reads": check.stale_reads,
                                 "stale_replica_reads": check.stale_replica_reads,
                                 "max_staleness_ms": check.max_staleness_ms}
    finally:
        cluster.stop()

    base = results["EVENTUAL"]["tps"]
    print(f"\npgbench -S -M prepared -c 16, {args.duration}s per mode; read-after-write checker: 8 sessions, "
          "4 reads per write, standby replay paused from 1 s to 3 s of a 4 s run")
    print(f"{'mode':18} {'tps':>8} {'/EVENTUAL':>10} {'reads':>7} {'replica share':>14} {'stale own reads':>16} "
          f"{'max stale ms':>13}")
    for mode, r in results.items():
        rel = f"{r['tps'] / base:.2f}" if r["tps"] and base else "-"
        tps = f"{r['tps']:.0f}" if r["tps"] else "-"
        print(f"{mode:18} {tps:>8} {rel:>10} {r['reads']:>7} {r['replica_share']:>14.2f} "
              f"{r['stale_reads']:>16} {r['max_staleness_ms']:>13.0f}  {r['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
