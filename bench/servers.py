"""Real dashboard server processes: the one place that starts, waits for and stops them.

Everything that runs the project as separate processes builds on this module: the
multi-process benchmarks here (`bench/soak.py`, `bench/run_multi.sh` through `main()`), and
the tests and `docs/make_screenshot.py` through `tests/servers.py`, which adds pytest's
pieces (fixtures, skips, failure reports). Dependencies point one way: tests import bench,
bench never imports tests, so a benchmark runs from a checkout with nothing but this
directory, and this module knows nothing of pytest (failures raise `ServerError`).

What it offers:

- `free_port`, `port_open`, `uvicorn_argv`, `server_env`;
- `Process` / `Server`: a child process logging to a file, started and waited for until it
  listens (bounded), stopped with SIGTERM then SIGKILL, killed, paused; `RedisServer`;
- `manage`, `manage_async`, `manage_spawn`: `manage.py` commands, and `prepare_database`
  (migrate, then `seed_demo` for the demo tokens);
- PostgreSQL (`create_database`, `drop_database`) and Redis (`redis_reachable`,
  `group_listeners`) helpers;
- `Cluster`: N servers sharing one fresh PostgreSQL database and Redis; a context manager.

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
import asyncio
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
from urllib.parse import urlsplit, urlunsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = str(PROJECT_DIR / ".venv" / "bin" / "python")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
# channels_redis' pub/sub layer: prefix "asgi" + "__group__" + the hubs' group (realtime/layer.py).
CHANGES_CHANNEL = "asgi__group__dashboard.changes"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 300.0
# The first line a process writes to its log at each start (not the process's own output).
LOG_HEADER = "--- starting "


class ServerError(RuntimeError):
    """A process that would not start, or a `manage.py` command that failed."""


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


def uvicorn_argv(port: int, python: str = sys.executable) -> list[str]:
    """The command line of one server process on a loopback port."""
    return [
        python,
        "-m",
        "uvicorn",
        "dashboard_project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws-per-message-deflate",
        "false",
        "--log-level",
        "warning",
    ]


def server_env(database_url: str, redis_url: str | None = None, *, debug: bool = True, **extra: str) -> dict[str, str]:
    """The environment of a server or `manage.py` process: ours, with the project's settings,
    `database_url`, `redis_url` (None: no REDIS_URL, so one process with the in-memory layer),
    DEBUG on or off, unbuffered output, then `extra`."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard_project.settings",
        DATABASE_URL=database_url,
        DJANGO_DEBUG="1" if debug else "0",
        PYTHONUNBUFFERED="1",
    )
    if redis_url is None:
        env.pop("REDIS_URL", None)
    else:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


# --- processes ---------------------------------------------------------------------

# Started and not stopped since: whose logs a failure report shows (tests/servers.py).
LIVE: list[Process] = []


class Process:
    """A child process listening on `port`, whose output goes to a log file; always stoppable."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        port: int,
        *,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.name, self.argv, self.env, self.log_path, self.port = name, argv, env, log_path, port
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts the process and returns once it accepts connections on its port."""
        self.launch()
        self.wait_until_listening()

    def launch(self) -> None:
        """Starts the process without waiting (to start several at once)."""
        if self.running:
            raise ServerError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:
            log.write(f"{LOG_HEADER}{self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if self not in LIVE:
            LIVE.append(self)

    def wait_until_listening(self) -> None:
        """Returns once the port accepts connections; raises ServerError (with the log) when the
        process exits first or `start_timeout` passes (the process is stopped then)."""
        assert self.proc is not None, f"{self.name} was never started"
        deadline = time.monotonic() + self.start_timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode} before accepting connections:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not accept connections on port {self.port} within "
                    f"{self.start_timeout} s:\n{self.log()}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing is read or answered."""
        assert self.running, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL, as a crash (a paused process too): nothing shuts down cleanly."""
        assert self.proc is not None, f"{self.name} was never started"
        self.proc.kill()
        self.proc.wait(timeout=self.stop_timeout)

    def terminate(self) -> None:
        """SIGTERM, the graceful shutdown (a paused process is resumed to hear it); no wait."""
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)

    def wait_or_kill(self, timeout: float | None = None) -> None:
        """Waits `timeout` (default `stop_timeout`) for the process to exit, then SIGKILLs it."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=self.stop_timeout)
        if self in LIVE:
            LIVE.remove(self)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time; nothing when not running."""
        self.terminate()
        self.wait_or_kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"


class Server(Process):
    """A dashboard server process (see `uvicorn_argv`)."""

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"


class RedisServer(Process):
    """A redis-server of our own: no persistence, so a restart starts empty."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def shutdown(self) -> None:
        """SHUTDOWN NOSAVE, and wait for the process to exit."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: the command succeeds by closing the connection.
        client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        finally:
            client.close()
        self.proc.wait(timeout=self.stop_timeout)


def make_redis_server(log_dir: Path, port: int | None = None, **timeouts: float) -> RedisServer:
    """A redis-server on a free loopback port (not started); ServerError when none is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerError("redis-server is not installed")
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return RedisServer("redis", argv, dict(os.environ), log_dir / f"redis-{port}.log", port, **timeouts)


# --- manage.py ---------------------------------------------------------------------


def _failed(args: tuple[str, ...], returncode: int, output: str) -> ServerError:
    return ServerError(f"manage.py {' '.join(args)} exited with {returncode}:\n{output[-4000:]}")


def manage(
    env: dict[str, str], *args: str, timeout: float = COMMAND_TIMEOUT_S, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """Runs `manage.py <args>` to the end; raises ServerError unless it succeeds."""
    result = subprocess.run(
        [python, "manage.py", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise _failed(args, result.returncode, result.stdout + result.stderr)
    return result


async def manage_spawn(
    env: dict[str, str], *args: str, merge_stderr: bool = False, python: str = sys.executable
) -> asyncio.subprocess.Process:
    """Starts `manage.py <args>` with its output piped (stderr into stdout with `merge_stderr`);
    the caller reads and stops it."""
    return await asyncio.create_subprocess_exec(
        python,
        "manage.py",
        *args,
        cwd=PROJECT_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
    )


async def manage_async(
    env: dict[str, str],
    *args: str,
    timeout: float = COMMAND_TIMEOUT_S,
    merge_stderr: bool = False,
    python: str = sys.executable,
) -> tuple[int, str, str]:
    """Runs `manage.py <args>` without blocking the event loop: (returncode, stdout, stderr),
    stderr "" with `merge_stderr`. Raises ServerError (after killing it) if it runs past `timeout`."""
    proc = await manage_spawn(env, *args, merge_stderr=merge_stderr, python=python)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ServerError(f"manage.py {' '.join(args)} did not finish within {timeout} s") from None
    return proc.returncode, out.decode(errors="replace"), (err or b"").decode(errors="replace")


def prepare_database(
    env: dict[str, str], *, force: bool = False, timeout: float = COMMAND_TIMEOUT_S, python: str = sys.executable
) -> None:
    """Migrates the database of `env` and seeds the demo tokens (`seed_demo`, with `--force`
    where DEBUG is off: they are public knowledge, fit only for a throwaway server)."""
    manage(env, "migrate", "--no-input", "-v0", timeout=timeout, python=python)
    manage(env, "seed_demo", *(["--force"] if force else []), timeout=timeout, python=python)


# --- PostgreSQL and Redis ------------------------------------------------------------


def database_url(name: str, server_url: str = POSTGRES_URL) -> str:
    """The URL of database `name` on the PostgreSQL server of `server_url`."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def postgres_connect(url: str, *, connect_timeout: int = 5, statement_timeout_ms: int | None = None):
    """An autocommit psycopg connection (a `postgres://` URL works too)."""
    import psycopg

    options = {} if statement_timeout_ms is None else {"options": f"-c statement_timeout={statement_timeout_ms}"}
    return psycopg.connect(
        url.replace("postgres://", "postgresql://", 1), autocommit=True, connect_timeout=connect_timeout, **options
    )


def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE `name`, connected to `admin_url` (a maintenance database)."""
    from psycopg import sql

    with postgres_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    """DROP DATABASE `name` if it exists, ending its sessions (FORCE: a killed server may have left some)."""
    from psycopg import sql

    with postgres_connect(admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def redis_reachable(url: str) -> bool:
    """True when a Redis answers PING at `url` within a second."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


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


# --- benchmark clusters --------------------------------------------------------------


class Cluster:
    """N server processes sharing one fresh PostgreSQL database and Redis; a context manager."""

    def __init__(
        self,
        processes: int = 2,
        redis_url: str = REDIS_URL,
        keep: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.processes = processes
        self.redis_url = redis_url
        self.keep = keep
        self.database = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
        self.workdir = Path(tempfile.mkdtemp(prefix="dashboard-multi."))
        self.env = server_env(
            database_url(self.database),
            redis_url,
            # Production-like: with DEBUG on, Django keeps every SQL query in memory.
            debug=False,
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
            DJANGO_LOG_LEVEL=os.environ.get("DJANGO_LOG_LEVEL", "WARNING"),
            **(extra_env or {}),
        )
        self.servers: list[Server] = []
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
        create_database(POSTGRES_URL, self.database)
        self._created = True
        prepare_database(self.env, force=True, python=PYTHON)
        for index in range(self.processes):
            port = free_port()
            server = Server(
                f"server {index}",
                uvicorn_argv(port, PYTHON),
                self.env,
                self.log_path(index),
                port,
                start_timeout=START_TIMEOUT_S,
                stop_timeout=STOP_TIMEOUT_S,
            )
            server.launch()
            self.servers.append(server)
        for server in self.servers:
            server.wait_until_listening()

    def stop(self) -> None:
        """Stop the servers (SIGTERM: the graceful shutdown path, then SIGKILL), drop the database."""
        for server in self.servers:
            server.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for server in self.servers:
            server.wait_or_kill(max(0.1, deadline - time.monotonic()))
        if self._created:
            try:
                drop_database(POSTGRES_URL, self.database)
                self._created = False
            except Exception as error:
                print(f"could not drop database {self.database}: {error}", file=sys.stderr)
        if self.failed or self.keep:
            print(f"server logs kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what clients need

    @property
    def urls(self) -> list[str]:
        return [server.ws for server in self.servers]

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    def log_path(self, index: int) -> Path:
        return self.workdir / f"server{index}.log"

    def notable_log_lines(self, index: int, limit: int = 20) -> tuple[int, list[str]]:
        """(number of non-empty lines, the last `limit` of them) of a server's log, our own
        start lines aside: at --log-level warning and DJANGO_LOG_LEVEL=WARNING, every line is
        worth reading."""
        try:
            text = self.log_path(index).read_text(errors="replace")
        except OSError:
            return 0, []
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith(LOG_HEADER)]
        return len(lines), lines[-limit:]

    def backend_pids(self) -> list[int]:
        """PostgreSQL backends serving this cluster's database (their CPU is the database's share)."""
        with postgres_connect(POSTGRES_URL) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchall()
        return [int(pid) for (pid,) in rows]


def substitute(text: str, fill: dict[str, str]) -> str:
    """Replace {urls} and {pids}; any other braces (JSON arguments) stay as they are."""
    for name, value in fill.items():
        text = text.replace("{" + name + "}", value)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a command against N fresh server processes ({urls} and {pids} in it become comma lists)."
    )
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
        print(
            f"{args.processes} uvicorn processes {cluster.pids} on {','.join(cluster.urls)}, database "
            f"{cluster.database}, {args.redis_url}; other servers listening on the change group: {others}",
            file=sys.stderr,
            flush=True,
        )
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
