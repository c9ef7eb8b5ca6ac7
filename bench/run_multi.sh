#!/usr/bin/env bash
# Benchmark several server processes on PostgreSQL + Redis with bench/loadclient.py.
#
#   bench/run_multi.sh [S1,S2,S3,S4] [loadclient options...]
#   bench/run_multi.sh S2 --viewers 2000 --runs 1     # two-process S2: 1,000 viewers on each process
#   bench/run_multi.sh S2 --smoke
#
# bench/servers.py creates a fresh PostgreSQL database, migrates and seeds it, starts
# BENCH_PROCESSES (default 2) uvicorn processes on free ports with REDIS_URL set, runs the client
# with --urls/--server-pids for all of them, then stops the servers and drops the database.
# Viewers are spread round-robin; the admin writes through the first process.  Nothing is
# pinned: on a 2-core machine the servers, the client, PostgreSQL and Redis share both cores,
# so read foreign_cpu_machine_s and client_cpu_ratio with the latencies.
set -euo pipefail

scenarios=${1:-S2}
shift $(($# < 1 ? $# : 1))
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/servers.py --processes "${BENCH_PROCESSES:-2}" -- \
    .venv/bin/python bench/loadclient.py --urls '{urls}' --server-pids '{pids}' --scenarios "$scenarios" "$@"
