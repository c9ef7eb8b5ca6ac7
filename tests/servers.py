"""Real server processes for the multi-process tests (tests/test_multiprocess.py).

Fixtures here start uvicorn processes of `dashboard_project.asgi:application`
on free loopback ports, against a fresh PostgreSQL database and a Redis
pub/sub channel layer, exactly as a deployment runs several processes. The
tests talk to those processes only (WebSocket, HTTP, psycopg for setup and
cross-checks); nothing goes through Django's test database.

Without PostgreSQL or Redis the tests skip, except under CI=true, where a
missing service fails them. When a test fails, every live server's log is
attached to the failure report (this module is loaded as a plugin by the test
module for that).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
# Every wait in these tests is bounded by one of these.
TIMEOUT = 5.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
LAYER_PROBE_SECONDS = 0.5
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
# The machine's Redis (the database number is ours to choose: see redis_url).
MACHINE_REDIS = urlsplit(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))


def unavailable(reason: str) -> None:
    """Skips, or fails under CI=true, where every service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


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


# --- processes ---------------------------------------------------------------------

_live: list["Process"] = []


class Process:
    """A child process whose output goes to a log file; always stoppable."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name, self.argv, self.env, self.log_path, self.port = name, argv, env, log_path, port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=PROJECT_DIR, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        if self not in _live:
            _live.append(self)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before accepting "
                            f"connections:\n{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.name} did not accept connections on port {self.port} within "
                            f"{START_TIMEOUT} s:\n{self.log()}", pytrace=False)
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is shut down cleanly."""
        assert self.running, f"{self.name} is not running"
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        if self in _live:
            _live.remove(self)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"


class Server(Process):
    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"


def server_env(database_url: str, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="dashboard_project.settings",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_DEBUG="1",
        DASHBOARD_REDIS_LAYER="pubsub",
        # One cluster per database: other runs on the same Redis stay apart.
        DASHBOARD_CHANNEL_PREFIX="test-" + database_url.rsplit("/", 1)[-1],
        DASHBOARD_LAYER_PROBE_SECONDS=str(LAYER_PROBE_SECONDS),
        # No heartbeat pings during a test: every frame a client sees is asserted.
        DASHBOARD_HEARTBEAT_SECONDS="3600",
        PYTHONUNBUFFERED="1",
    )
    return env


def make_server(name: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    argv = [
        sys.executable, "-m", "uvicorn", "dashboard_project.asgi:application",
        "--host", "127.0.0.1", "--port", str(port),
        "--ws-per-message-deflate", "false", "--log-level", "warning",
    ]
    return Server(name, argv, env, log_dir / f"server-{name}-{port}.log", port)


async def manage(env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None) -> str:
    """Runs `manage.py <args>` as its own process; returns its output, fails on error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", *args, cwd=PROJECT_DIR, env={**env, **(extra_env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"manage.py {' '.join(args)} did not finish within 60 s")
    text = output.decode(errors="replace")
    assert proc.returncode == 0, f"manage.py {' '.join(args)} exited with {proc.returncode}:\n{text}"
    return text


# --- services ----------------------------------------------------------------------


def postgres_urls(name: str) -> tuple[str, str]:
    """(URL of the `postgres` maintenance database, URL of database `name`)."""
    parts = urlsplit(POSTGRES_URL)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    return admin, urlunsplit(parts._replace(scheme="postgres", path=f"/{name}"))


def psql(url: str):
    import psycopg

    # Bounded: a statement waiting on a lock fails instead of hanging the suite.
    return psycopg.connect(
        url.replace("postgres://", "postgresql://", 1), autocommit=True, connect_timeout=3,
        options="-c statement_timeout=10000",
    )


class Database:
    def __init__(self, name: str) -> None:
        self.name = name
        self.admin_url, self.url = postgres_urls(name)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psql(self.url) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> None:
        with psql(self.url) as conn:
            conn.execute(sql, params)


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A fresh PostgreSQL database, migrated; dropped at the end."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed")
    db = Database(f"mp_{secrets.token_hex(6)}")
    try:
        with psql(db.admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{db.name}"')
    except Exception as error:
        unavailable(f"PostgreSQL not reachable at {db.admin_url}: {error}")
    try:
        env = server_env(db.url, "")
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v0"], cwd=PROJECT_DIR, env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, f"migrate failed:\n{result.stdout}{result.stderr}"
        # Where the demo tokens are stored rather than built in, store them.
        commands = subprocess.run(
            [sys.executable, "manage.py", "help", "--commands"], cwd=PROJECT_DIR, env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        assert commands.returncode == 0, commands.stderr
        if "seed_demo" in commands.stdout.split():
            result = subprocess.run(
                [sys.executable, "manage.py", "seed_demo"], cwd=PROJECT_DIR, env=env,
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
            assert result.returncode == 0, f"seed_demo failed:\n{result.stdout}{result.stderr}"
        yield db
    finally:
        with psql(db.admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


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
        self.proc.wait(timeout=STOP_TIMEOUT)


def redis_reachable(host: str, port: int) -> bool:
    import redis

    try:
        client = redis.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def make_redis_server(log_dir: Path, port: int | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return RedisServer("redis", argv, dict(os.environ), log_dir / f"redis-{port}.log", port)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """The machine's Redis when reachable (a random database number: pub/sub
    channels are shared across numbers anyway, and the hubs read the
    database, so other users of that Redis cannot change what we see);
    otherwise a redis-server of our own."""
    host, port = MACHINE_REDIS.hostname or "127.0.0.1", MACHINE_REDIS.port or 6379
    if redis_reachable(host, port):
        yield urlunsplit(MACHINE_REDIS._replace(path=f"/{secrets.randbelow(15) + 1}"))
        return
    server = make_redis_server(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class Cluster:
    def __init__(self, database: Database, redis_url: str, log_dir: Path, names: tuple[str, str] = ("A", "B")) -> None:
        self.database = database
        self.redis_url = redis_url
        self.env = server_env(database.url, redis_url)
        self.a = make_server(names[0], self.env, log_dir)
        self.b = make_server(names[1], self.env, log_dir)

    def start(self) -> None:
        self.a.start()
        self.b.start()

    def ensure_running(self) -> None:
        for server in (self.a, self.b):
            if not server.running:
                server.start()

    def stop(self) -> None:
        for server in (self.a, self.b):
            server.stop()


@pytest.fixture(scope="module")
def cluster(database, redis_url, tmp_path_factory):
    """Two server processes, A and B, sharing the database and the layer."""
    cluster = Cluster(database, redis_url, tmp_path_factory.mktemp("servers"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- protocol client -----------------------------------------------------------------


class Client:
    """A protocol client over a real WebSocket: requests get ids, and pushes
    that arrive while waiting for a reply are kept in order."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.ids = itertools.count(1)
        self.pushes: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] | None = None

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.name}: no frame within {timeout} s") from None
        assert isinstance(text, str), f"{self.name}: binary frame {text!r}"
        return json.loads(text)

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Sends a request and returns its whole reply frame."""
        request_id = next(self.ids)
        await self.send({"id": request_id, "type": type, **fields})
        while True:
            frame = await self.receive()
            if frame.get("type") == "push":
                self.pushes.append(frame)
                continue
            assert frame.get("id") == request_id, f"{self.name}: expected reply {request_id}, got {frame}"
            return frame

    async def ok(self, type: str, **fields: Any) -> Any:
        reply = await self.request(type, **fields)
        assert reply["type"] == "result", f"{self.name}: {reply}"
        return reply["data"]

    async def login(self, token: str) -> None:
        await self.ok("auth.login", token=token)

    async def subscribe(self, query: str, params: dict | None = None) -> tuple[str, Any]:
        fields = {"query": query} if params is None else {"query": query, "params": params}
        data = await self.ok("store.subscribe", **fields)
        assert set(data) == {"subscriptionId", "data"}, data
        return data["subscriptionId"], data["data"]

    async def push(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next push (of any subscription)."""
        if self.pushes:
            return self.pushes.pop(0)
        frame = await self.receive(timeout)
        assert frame.get("type") == "push", f"{self.name}: expected a push, got {frame}"
        return frame

    async def pushes_by_subscription(self, count: int, timeout: float = TIMEOUT) -> dict[str, dict]:
        """The next `count` pushes, keyed by subscription: each subscription at most once."""
        deadline = asyncio.get_running_loop().time() + timeout
        got: dict[str, dict] = {}
        for _ in range(count):
            remaining = max(0.01, deadline - asyncio.get_running_loop().time())
            frame = await self.push(remaining)
            sid = frame.get("subscriptionId")
            assert sid not in got, f"{self.name}: two pushes for {sid}: {got[sid]} then {frame}"
            got[sid] = frame
        return got

    async def silent(self, seconds: float = 0.6) -> bool:
        """True when no frame arrives for `seconds`; a frame that does is kept."""
        if self.pushes:
            return False
        try:
            text = await asyncio.wait_for(self.ws.recv(), seconds)
        except asyncio.TimeoutError:
            return True
        frame = json.loads(text)
        self.pushes.append(frame)
        return False

    async def close(self) -> None:
        await self.ws.close()


def push_frame(subscription_id: str, data: Any) -> dict[str, Any]:
    return {"type": "push", "channel": "subscription", "subscriptionId": subscription_id, "data": data}


async def open_client(url: str, name: str, token: str | None = None) -> Client:
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None, ping_interval=None, open_timeout=TIMEOUT, close_timeout=2)
    client = Client(ws, name)
    welcome = await client.receive()
    assert set(welcome) == {"type", "version", "serverTime", "requiresAuth"}, welcome
    assert (welcome["type"], welcome["version"], welcome["requiresAuth"]) == ("welcome", "1.0.0", True), welcome
    client.welcome = welcome
    if token is not None:
        await client.login(token)
    return client


@pytest.fixture
async def ws_connect():
    """Opens protocol clients to a server; always closes them."""
    opened: list[Client] = []

    async def open_(server: Server, token: str | None = None, name: str | None = None) -> Client:
        client = await open_client(server.ws, name or f"{token or 'anon'}@{server.name}", token)
        opened.append(client)
        return client

    open_.opened = opened  # type: ignore[attr-defined]
    yield open_
    for client in opened:
        try:
            await asyncio.wait_for(client.close(), TIMEOUT)
        except Exception:
            pass


# --- failure reports ----------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the log of every live server process to a failing test's report."""
    report = yield
    if report.failed and _live:
        for process in _live:
            report.sections.append((f"log of {process.name} (port {process.port})", process.log()))
    return report
