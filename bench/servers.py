"""Fresh dashboard server processes for multi-process benchmarks: PostgreSQL + Redis + N uvicorns.

A `Cluster` creates a new PostgreSQL database (psycopg), migrates it, seeds the demo tokens
(`manage.py seed_demo --force`, when the command exists), starts N uvicorn processes on free
loopback ports with production-like settings and the Redis channel layer, and on exit stops
them and drops the database.  Every wait is bounded.

    # as a library (bench/soak.py)
    with Cluster(processes=2) as cluster:
        cluster.urls, cluster.pids, cluster.database

    # as a wrapper (bench/run_multi.sh): {urls} and {pids} in the command become comma lists
    .venv/bin/python bench/servers.py --processes 2 -- \\
        .venv/bin/python bench/loadclient.py --urls {urls} --server-pids {pids} --scenarios S2

Environment: BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres, the
maintenance database used to create and drop the fresh one), BENCH_REDIS_URL (default
redis://127.0.0.1:6379/9).  Redis pub/sub channels ignore the database number, so servers of
other runs on the same Redis hear our changes and we theirs; `group_listeners()` tells.
The servers' logs stay in a temp dir when a run fails or with --keep.
"""
from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = str(PROJECT_DIR / ".venv" / "bin" / "python")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
# channels_redis' pub/sub layer: prefix "asgi" + "__group__" + the hub's group (realtime/fanout.py).
CHANGES_CHANNEL = "asgi__group__dashboard.changes"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def raise_fd_limit() -> None:
    """Servers and clients with a thousand sockets each need more than the usual 1,024 descriptors;
    children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def database_url(name: str) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


def group_listeners(redis_url: str = REDIS_URL) -> int | None:
    """How many server processes (any run, any database number) listen for store changes on this Redis."""
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return int(dict(client.pubsub_numsub(CHANGES_CHANNEL)).get(CHANGES_CHANNEL.encode(), 0))
        finally:
            client.close()
    except Exception:
        return None


class Cluster:
    """N server processes sharing one fresh PostgreSQL database and Redis; a context manager."""

    def __init__(self, processes: int = 2, redis_url: str = REDIS_URL, keep: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.processes = processes
        self.redis_url = redis_url
        self.keep = keep
        self.database = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.workdir = Path(tempfile.mkdtemp(prefix="dashboard-multi."))
        self.env = self._environment(extra_env or {})
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.failed = False
        self._created = False

    # --- lifecycle

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.failed = True
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.failed = self.failed or kind is not None
        self.stop()

    def start(self) -> None:
        raise_fd_limit()
        self._create_database()
        self._manage("migrate", "--noinput")
        if "seed_demo" in self._manage("help", "--commands").split():
            # DEBUG is off, as in production, so the throwaway demo tokens need --force.
            self._manage("seed_demo", "--force")
        for index in range(self.processes):
            self._start_server(index)
        for index in range(self.processes):
            self._wait_for_port(index)

    def stop(self) -> None:
        """Stop the servers (SIGTERM: the graceful shutdown path, then SIGKILL), drop the database."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._created:
            self._drop_database()
        if self.failed or self.keep:
            print(f"server logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what clients need

    @property
    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{port}/ws/" for port in self.ports]

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs]

    def log_path(self, index: int) -> Path:
        return self.workdir / f"server{index}.log"

    def notable_log_lines(self, index: int, limit: int = 20) -> tuple[int, list[str]]:
        """(number of non-empty lines, the last `limit` of them) of a server's log: at
        --log-level warning and DJANGO_LOG_LEVEL=WARNING, every line is worth reading."""
        try:
            lines = [line for line in self.log_path(index).read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return 0, []
        return len(lines), lines[-limit:]

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this cluster's database (their CPU is the database's share)."""
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchall()
        return [int(pid) for (pid,) in rows]

    # --- steps

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url(self.database),
            REDIS_URL=self.redis_url,
            # Production-like: with DEBUG on, Django keeps every SQL query in memory.
            DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DASHBOARD_DEMO_TOKENS="1",
            DJANGO_LOG_LEVEL=os.environ.get("DJANGO_LOG_LEVEL", "WARNING"),
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py and asgi.py pick the project's own
        env.update(extra)
        return env

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
        self._created = True

    def _drop_database(self) -> None:
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
                # FORCE ends backends a killed server may have left behind.
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.database)))
            self._created = False
        except Exception as error:
            print(f"could not drop database {self.database}: {error}", file=sys.stderr)

    def _manage(self, *args: str) -> str:
        result = subprocess.run([PYTHON, "manage.py", *args], cwd=PROJECT_DIR, env=self.env, capture_output=True,
                                text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return result.stdout

    def _start_server(self, index: int) -> None:
        port = free_port()
        command = [PYTHON, "-m", "uvicorn", "dashboard_project.asgi:application", "--host", "127.0.0.1",
                   "--port", str(port), "--ws-per-message-deflate", "false", "--log-level", "warning"]
        with open(self.log_path(index), "wb") as log:
            proc = subprocess.Popen(command, cwd=PROJECT_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.ports.append(port)
        self.procs.append(proc)

    def _wait_for_port(self, index: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.ports[index]):
            if self.procs[index].poll() is not None:
                raise RuntimeError(f"server {index} exited with {self.procs[index].returncode}; "
                                   f"log: {self.log_path(index)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {index} did not open port {self.ports[index]} in {START_TIMEOUT_S}s")
            time.sleep(0.1)


def substitute(text: str, fill: dict[str, str]) -> str:
    """Replace {urls} and {pids}; any other braces (JSON arguments) stay as they are."""
    for name, value in fill.items():
        text = text.replace("{" + name + "}", value)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command against N fresh server processes "
                                                 "({urls} and {pids} in it become comma lists).")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    others = group_listeners(args.redis_url)
    with Cluster(args.processes, args.redis_url, args.keep) as cluster:
        print(f"{args.processes} uvicorn processes {cluster.pids} on {','.join(cluster.urls)}, database "
              f"{cluster.database}, {args.redis_url}; other servers listening on the change group: {others}",
              file=sys.stderr, flush=True)
        fill = {"urls": ",".join(cluster.urls), "pids": ",".join(map(str, cluster.pids))}
        rc = subprocess.run([substitute(part, fill) for part in command], cwd=PROJECT_DIR).returncode
        for index in range(args.processes):
            count, tail = cluster.notable_log_lines(index)
            if count:
                print(f"--- server {index}: {count} log lines, last {len(tail)}:", *tail, sep="\n", file=sys.stderr)
        cluster.failed = rc != 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
