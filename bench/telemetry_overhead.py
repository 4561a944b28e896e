"""What observability costs: pgbench -S through the proxy with metrics, telemetry
and the UDP listener off, then on (a throwaway Redis receiving one telemetry
record per second and a Prometheus-style scrape of /metrics every second), in
alternating runs so drift on this shared machine hits both sides. The goal:
under 3% apart.

Usage: python bench/telemetry_overhead.py [--duration 8] [--rounds 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy" / "local"))

import pgbench_compare as pc  # noqa: E402
import redisserver  # noqa: E402
from procutil import free_port  # noqa: E402


def scrape_every_second(url: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--primary")
    parser.add_argument("--replica", action="append", default=[])
    args = parser.parse_args()

    cluster = pc.cluster_from_args(args)
    redis = redisserver.start_local_redis()
    config = pc.BenchConfig("16c prepared", 16, 2, "prepared")
    results = {"off": [], "on": []}
    try:
        pc.prepare_cluster(cluster, args.scale)
        with tempfile.TemporaryDirectory(prefix="clidash-obs-") as tmp:
            workdir = Path(tmp)
            for _ in range(args.rounds):
                for label in ("off", "on"):
                    if label == "off":
                        extra = ["--no-metrics", "--no-udp"]
                    else:
                        metrics_port = free_port()
                        extra = ["--redis", redis.url, "--metrics-listen", f"127.0.0.1:{metrics_port}"]
                    stop = threading.Event()
                    with pc.clidash_target(cluster, workdir, extra) as (host, port):
                        if label == "on":
                            threading.Thread(target=scrape_every_second, daemon=True,
                                             args=(f"http://127.0.0.1:{metrics_port}/metrics", stop)).start()
                        result = pc.run_pgbench(config, "clidash", host, port, cluster.primary,
                                                args.duration, workdir)
                        stop.set()
                    results[label].append(result.tps or 0.0)
    finally:
        redis.stop()
        cluster.stop()

    off = sum(results["off"]) / len(results["off"])
    on = sum(results["on"]) / len(results["on"])
    print(f"\npgbench -S -M prepared -c 16, {args.duration}s x {args.rounds} rounds per side (alternating)")
    print(f"metrics/telemetry/UDP off: {off:8.0f} tps  runs {', '.join(f'{t:.0f}' for t in results['off'])}")
    print(f"metrics/telemetry on     : {on:8.0f} tps  runs {', '.join(f'{t:.0f}' for t in results['on'])}")
    print(f"on/off: {on / off:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
