"""Real server processes in tests: pytest's layer on `bench/servers.py`.

`bench/servers.py` is the one place that starts, waits for and stops server processes
and runs `manage.py` (tests import bench, never the other way: benchmarks stand alone).
This module adds what only tests need, and raises `ServerError` from there as is:

- `LiveServer`: one server on its own SQLite file and the in-memory layer (test_client,
  test_commands, test_shutdown, test_slow_client, test_browser, docs/make_screenshot.py),
  with `live_server` and the `template_database` fixture to start it fast.
- Multi-process fixtures (test_multiprocess, test_access_multiprocess): uvicorn processes
  of `dashboard_project.asgi:application` on free loopback ports, against a fresh
  PostgreSQL database and a Redis pub/sub channel layer, exactly as a deployment runs
  several processes. The tests talk to those processes only (WebSocket, HTTP, psycopg for
  setup and cross-checks); nothing goes through Django's test database. Without
  PostgreSQL or Redis they skip, except under CI=true, where a missing service fails them.
- A protocol client over a real WebSocket (`Client`, `open_client`, `ws_connect`).
- When a test fails, every live server's log is attached to the failure report (a test
  module loads this module as a plugin for that).

Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bench.servers import (  # noqa: F401  (PROJECT_DIR, ServerError, port_open: for the tests)
    LIVE,
    PROJECT_DIR,
    RedisServer,
    Server,
    ServerError,
    create_database,
    database_url,
    drop_database,
    free_port,
    manage_async,
    manage_spawn,
    port_open,
    postgres_connect,
    prepare_database,
    redis_reachable,
    server_env,
    uvicorn_argv,
)
from bench.servers import make_redis_server as _make_redis_server

# Every wait in these tests is bounded by one of these.
TIMEOUT = 5.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0
LAYER_PROBE_SECONDS = 0.5
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
# The machine's Redis, on a database of the tests' own (not 0, which a
# development server on the same machine may use): every test that uses
# Redis takes this one setting (README "Tests").
MACHINE_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def unavailable(reason: str) -> None:
    """Skips, or fails under CI=true, where every service must be there."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


# --- one server on SQLite --------------------------------------------------------------


class LiveServer(Server):
    """One server on its own SQLite file in `workdir` (which holds its log too), DEBUG on so
    that the page's static files are served; `extra_env` goes into its environment. It can
    be stopped, killed or paused, and started again on the same port."""

    def __init__(self, workdir: Path, *, runserver: bool = False, **extra_env: str) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = server_env(f"sqlite:///{self.workdir.resolve() / 'db.sqlite3'}", **extra_env)
        # runserver: the development server (daphne) instead of uvicorn.
        argv = (
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
            if runserver
            else uvicorn_argv(port)
        )
        # A graceful shutdown with pages connected may take longer than STOP_TIMEOUT.
        super().__init__(
            "server", argv, env, self.workdir / "server.log", port, start_timeout=START_TIMEOUT, stop_timeout=10.0
        )

    @property
    def url(self) -> str:
        return self.ws

    def prepare(self) -> None:
        """Migrates the database and seeds the demo tokens (`admin-token`, `viewer-token`)."""
        prepare_database(self.env, timeout=COMMAND_TIMEOUT)

    async def manage_async(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Runs a command without blocking the event loop: (returncode, stdout, stderr)."""
        return await manage_async(self.env, *args, timeout=timeout)

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        """Starts a long-running command; the caller stops it."""
        return await manage_spawn(self.env, *args)


def live_server(workdir: Path, template: Path | None = None, **extra_env: str) -> LiveServer:
    """A started server. With `template` (a directory that a prepared
    server used), its database is copied instead of migrated again."""
    server = LiveServer(workdir, **extra_env)
    if template is None:
        server.prepare()
    else:
        for suffix in ("", "-wal", "-shm"):
            source = template / f"db.sqlite3{suffix}"
            if source.exists():
                shutil.copyfile(source, workdir / source.name)
    server.start()
    return server


def prepared_database(workdir: Path) -> Path:
    """A directory holding a migrated and seeded database, for `template`."""
    LiveServer(workdir).prepare()
    return workdir


@pytest.fixture(scope="session")
def template_database(tmp_path_factory) -> Path:
    """One migrated, seeded database per test run, copied by each server
    (import this fixture into the test module that uses it)."""
    return prepared_database(tmp_path_factory.mktemp("template"))


def redis_url_if_reachable() -> str | None:
    """The machine's Redis at TEST_REDIS_URL, or None."""
    return MACHINE_REDIS_URL if redis_reachable(MACHINE_REDIS_URL) else None


# --- several servers on PostgreSQL and Redis ---------------------------------------------


def cluster_env(database_url: str, redis_url: str) -> dict[str, str]:
    """The environment of a cluster's servers and commands: the Redis pub/sub layer."""
    return server_env(
        database_url,
        redis_url,
        DASHBOARD_REDIS_LAYER="pubsub",
        # One cluster per database: other runs on the same Redis stay apart.
        DASHBOARD_CHANNEL_PREFIX="test-" + database_url.rsplit("/", 1)[-1],
        DASHBOARD_LAYER_PROBE_SECONDS=str(LAYER_PROBE_SECONDS),
        # No heartbeat pings during a test: every frame a client sees is asserted.
        DASHBOARD_HEARTBEAT_SECONDS="3600",
    )


def make_server(name: str, env: dict[str, str], log_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    return Server(
        name,
        uvicorn_argv(port),
        env,
        log_dir / f"server-{name}-{port}.log",
        port,
        start_timeout=START_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
    )


async def manage(env: dict[str, str], *args: str, extra_env: dict[str, str] | None = None) -> str:
    """Runs `manage.py <args>` as its own process; returns its output, fails on error."""
    code, output, _ = await manage_async(
        {**env, **(extra_env or {})}, *args, timeout=COMMAND_TIMEOUT, merge_stderr=True
    )
    assert code == 0, f"manage.py {' '.join(args)} exited with {code}:\n{output}"
    return output


# Bounded: a statement waiting on a lock fails instead of hanging the suite.
psql = partial(postgres_connect, connect_timeout=3, statement_timeout_ms=10000)


class Database:
    def __init__(self, name: str) -> None:
        self.name = name
        self.admin_url = database_url("postgres", POSTGRES_URL)
        self.url = database_url(name, POSTGRES_URL)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psql(self.url) as conn:
            return conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple = ()) -> None:
        with psql(self.url) as conn:
            conn.execute(sql, params)


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A fresh PostgreSQL database, migrated and seeded; dropped at the end."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed")
    db = Database(f"mp_{secrets.token_hex(6)}")
    try:
        create_database(db.admin_url, db.name)
    except Exception as error:
        unavailable(f"PostgreSQL not reachable at {db.admin_url}: {error}")
    try:
        prepare_database(cluster_env(db.url, ""), timeout=120)
        yield db
    finally:
        drop_database(db.admin_url, db.name)


def make_redis_server(log_dir: Path, port: int | None = None) -> RedisServer:
    try:
        return _make_redis_server(log_dir, port, start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT)
    except ServerError as error:
        unavailable(str(error))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """The machine's Redis at TEST_REDIS_URL when reachable (pub/sub channels
    span database numbers, so each cluster has its own channel prefix, and
    the hubs read the database, so other users of that Redis cannot change
    what we see); otherwise a redis-server of our own."""
    if redis_reachable(MACHINE_REDIS_URL):
        yield MACHINE_REDIS_URL
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
        self.env = cluster_env(database.url, redis_url)
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
        except TimeoutError:
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
        except TimeoutError:
            return True
        frame = json.loads(text)
        self.pushes.append(frame)
        return False

    async def close(self) -> None:
        await self.ws.close()


def push_frame(subscription_id: str, data: Any) -> dict[str, Any]:
    return {"type": "push", "channel": "subscription", "subscriptionId": subscription_id, "data": data}


async def open_client(url: str, name: str, token: str | None = None, **options: Any) -> Client:
    """`options` go to websockets' connect (compression=None, max_queue=1, ...)."""
    from websockets.asyncio.client import connect

    options = {"max_size": None, "ping_interval": None, "open_timeout": TIMEOUT, "close_timeout": 2, **options}
    ws = await connect(url, **options)
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
    if report.failed and LIVE:
        for process in LIVE:
            report.sections.append((f"log of {process.name} (port {process.port})", process.log()))
    return report


@pytest.fixture
async def open_dashboard_client():
    """Opens dashboard_client.DashboardClient instances with quick reconnects;
    always closes them."""
    from dashboard_client import Backoff, DashboardClient

    opened: list[DashboardClient] = []

    async def open_(url: str, token: str | None = "admin-token", **options: Any) -> DashboardClient:
        options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
        options.setdefault("request_timeout", CLIENT_TIMEOUT)
        client = DashboardClient(url, token, **options)
        await client.connect()
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await asyncio.wait_for(client.close(), CLIENT_TIMEOUT)


CLIENT_TIMEOUT = 10.0
