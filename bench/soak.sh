#!/usr/bin/env bash
# Soak test of two server processes on PostgreSQL + Redis (see bench/soak.py for what it checks).
#
#   bench/soak.sh                 # 500 viewers, 20,000 writes
#   bench/soak.sh --smoke         # tiny, under 30 s
#   bench/soak.sh --viewers 200 --writes 5000 --duration 60 --keep
#
# Exit status: 0 all checks passed, 1 a check failed (lost final state, duplicate push, error), 2 setup failed.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/soak.py "$@"
