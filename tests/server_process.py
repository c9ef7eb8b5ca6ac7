"""A real server process for the client and command tests (test_client, test_commands).

`LiveServer` runs `uvicorn dashboard_project.asgi:application` on a free
loopback port against its own SQLite file (migrated, and seeded with
`seed_demo` when that command exists, so `admin-token` and `viewer-token`
work whether tokens are built in or stored). Tests talk to it over real
sockets and run `manage.py` commands against the same database; nothing goes
through Django's test database. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0


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


def redis_url_if_reachable() -> str | None:
    """The machine's Redis (db 0 is irrelevant: pub/sub spans databases), or None."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return url if client.ping() else None
        finally:
            client.close()
    except Exception:
        return None


@lru_cache(maxsize=None)
def available_commands() -> frozenset[str]:
    result = subprocess.run(
        [sys.executable, "manage.py", "help", "--commands"], cwd=PROJECT_DIR,
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return frozenset(result.stdout.split())


class LiveServer:
    def __init__(self, workdir: Path, **extra_env: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.env = dict(os.environ)
        self.env.pop("REDIS_URL", None)
        self.env.update(
            DJANGO_SETTINGS_MODULE="dashboard_project.settings",
            DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
            DJANGO_DEBUG="1",
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def prepare(self) -> None:
        """Migrates the database, and seeds the demo tokens where they are stored."""
        self.manage("migrate", "--no-input", "-v0")
        if "seed_demo" in available_commands():
            self.manage("seed_demo")

    def manage(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=self.env,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result

    async def manage_async(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Runs a command without blocking the event loop: (returncode, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", *args, cwd=PROJECT_DIR, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"manage.py {' '.join(args)} did not finish within {timeout} s")
        return proc.returncode, out.decode(), err.decode()

    async def spawn(self, *args: str) -> asyncio.subprocess.Process:
        """Starts a long-running command; the caller stops it."""
        return await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", *args, cwd=PROJECT_DIR, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        assert not self.running, "already running"
        argv = [
            sys.executable, "-m", "uvicorn", "dashboard_project.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--ws-per-message-deflate", "false", "--log-level", "warning",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=PROJECT_DIR, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"server not listening within {START_TIMEOUT} s:\n{self.log()}", pytrace=False)
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the socket stays open but nothing is read or answered."""
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL (works on a paused process too): connections drop at once."""
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"


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
