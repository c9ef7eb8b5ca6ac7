#!/usr/bin/env bash
# Benchmark one fresh server process with bench/loadclient.py: server pinned to core 0, client to core 1.
#
#   bench/run.sh [uvicorn|daphne] [S1,S2,S3,S4] [loadclient options...]
#   bench/run.sh uvicorn S1,S2,S3,S4 --smoke        # CI-sized correctness check, exit 1 on failure
#   bench/run.sh daphne S2 --viewers 500 --runs 3
#
# Each call gets a new SQLite database in a temp dir, migrates it, starts the server on a free port
# (or BENCH_PORT), waits for the port, runs the client with --server-pid, then stops the server.
# BENCH_KEEP=1 keeps the temp dir (database, server log); it is also kept when the client fails.
set -euo pipefail

server=${1:-uvicorn}
scenarios=${2:-S1,S2,S3,S4}
shift $(($# < 2 ? $# : 2))

cd "$(dirname "$0")/.."
py=.venv/bin/python
tmp=$(mktemp -d /tmp/dashboard-bench.XXXXXX)
port=${BENCH_PORT:-$($py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# Production-like settings: with DEBUG on, Django keeps every SQL query in memory, which
# would distort CPU and RSS figures (so seed_demo below needs --force).
export DATABASE_URL="sqlite:///$tmp/db.sqlite3"
export DJANGO_DEBUG=0
DJANGO_SECRET_KEY=$($py -c 'import secrets; print(secrets.token_urlsafe(50))')
export DJANGO_SECRET_KEY
export DJANGO_ALLOWED_HOSTS=127.0.0.1,localhost
export DJANGO_LOG_LEVEL=${DJANGO_LOG_LEVEL:-WARNING}
unset REDIS_URL  # one process: the in-memory channel layer

# With fewer than two cores, pinning would put server and client on the same core anyway.
if [ "$(nproc)" -ge 2 ]; then
    server_pin=(taskset -c 0)
    client_pin=(taskset -c 1)
else
    server_pin=()
    client_pin=()
fi
ulimit -n "$(ulimit -Hn)"  # 1,000 viewers need more descriptors than the usual 1,024

case $server in
    uvicorn) command=("$py" -m uvicorn dashboard_project.asgi:application --host 127.0.0.1 --port "$port"
                      --ws-max-size 1048576 --ws-per-message-deflate false --log-level warning) ;;
    daphne) command=(.venv/bin/daphne -b 127.0.0.1 -p "$port" dashboard_project.asgi:application) ;;
    *) echo "usage: $0 [uvicorn|daphne] [S1,S2,S3,S4] [loadclient options...]" >&2; exit 2 ;;
esac
# Extra server options, e.g. BENCH_SERVER_ARGS="--websocket-max-message-size 268435456" for daphne,
# whose 1 MiB default also limits outgoing frames (a 10,000-metric result is ~1.8 MB).
read -r -a extra_args <<<"${BENCH_SERVER_ARGS:-}"
command+=("${extra_args[@]}")

"$py" manage.py migrate --noinput >"$tmp/migrate.log"
"$py" manage.py seed_demo --force >>"$tmp/migrate.log"

# taskset execs the server, so $! is the server's own pid.
"${server_pin[@]}" "${command[@]}" >"$tmp/server.log" 2>&1 &
server_pid=$!
rc=1

stop_server() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid"
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    # Daphne logs every WebSocket connect and disconnect; only the rest is worth showing.
    notable=$(grep -v -E '"WS(CONNECT|DISCONNECT) ' "$tmp/server.log" | tail -n 20 || true)
    if [ -n "$notable" ]; then
        echo "--- last lines of the server log ($tmp/server.log):" >&2
        echo "$notable" >&2
    fi
    if [ "$rc" -eq 0 ] && [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$tmp"; else echo "kept $tmp" >&2; fi
}
trap stop_server EXIT

for _ in $(seq 300); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "server exited before opening port $port" >&2
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
done

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then revision+="+uncommitted"; fi
echo "$server server pid $server_pid on port $port, code $revision; client pinned with: ${client_pin[*]:-none}" >&2
rc=0
"${client_pin[@]}" "$py" bench/loadclient.py --url "ws://127.0.0.1:$port/ws/" --server-pid "$server_pid" \
    --scenarios "$scenarios" "$@" || rc=$?
exit "$rc"
