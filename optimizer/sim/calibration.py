"""Calibration constants for the window-level simulator.

Measured when the simulator was written, on the dev box (AMD EPYC VM, 2 vCPUs,
PostgreSQL 15 from the local binaries) with `optimizer/sim/measure.py` against the repo's throwaway cluster
(`python deploy/local/pgcluster.py up --replicas 1`, primary + 1 streaming hot
standby on 127.0.0.1): one asyncpg connection per server, sequential round trips
for 3 s each on a 1,000-row table.

    point SELECT on primary   n=8844   mean 0.338 ms  p50 0.280  p99 1.045
    point SELECT on replica   n=12273  mean 0.244 ms  p50 0.198  p99 0.881
    1-row UPDATE (autocommit) n=10746  mean 0.278 ms  p50 0.254  p99 0.611
    write -> visible on replica n=251  mean 0.820 ms  p50 0.551  p99 4.986

These are unloaded round trips over loopback, so they include client + protocol
overhead and overstate per-request server time a little; we use them as service
times anyway (conservative: the primary saturates a bit earlier than reality).
Local replication lag is sub-millisecond; real deployments (network, fsync on a
different disk, larger WAL) see tens of ms, so scenarios scale the *base* lag up
and keep only the measured noise shape (p99/median ~ 9 -> lognormal sigma ~ 0.9).
Re-measure on the target hardware and update the numbers above when it changes.
"""

# Service times (ms per request, mean), from the measurements above.
PRIMARY_READ_MS = 0.34
REPLICA_READ_MS = 0.25
WRITE_MS = 0.28

# Measured p99/mean of single-request service time (~3 for reads, ~2.2 writes).
SERVICE_P99_RATIO = 3.0

# Concurrency of one server (vCPUs of the measuring box): capacity = workers / service time.
WORKERS = 2

# Replication visibility delay: median and lognormal sigma (ln(p99/p50)/2.33 = ln(9)/2.33).
LAG_MEDIAN_MS = 0.55
LAG_SIGMA = 0.9

# Replica replay cost per primary write (ms of replay work); WAL replay of a 1-row
# UPDATE is cheaper than executing it. Not measured: a placeholder (~1/4 of WRITE_MS).
REPLAY_MS_PER_WRITE = 0.07

# Default scenario base lag for "a real network" (ms); chosen, not measured.
REAL_BASE_LAG_MS = 20.0

# Proxy limits that the simulator mirrors (DESIGN section 4).
EVENTUAL_HARD_CAP_MS = 30_000.0
# Requests queued longer than this time out and count as errors.
TIMEOUT_MS = 5_000.0
