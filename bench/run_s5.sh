#!/usr/bin/env bash
# Benchmark S5 (issue 12): history preloaded by SQL, one dashboard page, a collector-like writer.
#
#   bench/run_s5.sh                                    # 10k, 1M, 10M readings on SQLite and PostgreSQL
#   bench/run_s5.sh --sizes 10000,1m --databases sqlite --seconds 30
#   bench/run_s5.sh --smoke --databases sqlite         # CI size, exit 1 on a missing push or a wrong result
#
# bench/s5.py starts its own servers (pinned to core 0) and pins itself to core 1; see its docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/s5.py "$@"
