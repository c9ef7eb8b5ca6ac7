"""A real dashboard server process, a protocol client for it and a headless
Chromium: shared by the browser tests and `docs/make_screenshot.py`.

The server is uvicorn serving `dashboard_project.asgi:application` on a free
loopback port with its own SQLite file (migrated, and seeded with
`manage.py seed_demo` when that command exists), in DEBUG so that the page's
static files are served too. It can be restarted on the same port.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
TIMEOUT = 5.0


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


class ServerError(RuntimeError):
    pass


class LiveServer:
    """One uvicorn process; `workdir` holds its database and log."""

    def __init__(self, workdir: Path, *, heartbeat_seconds: float = 30, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / "server.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "dashboard_project.settings",
            "DATABASE_URL": f"sqlite:///{self.workdir.resolve() / 'db.sqlite3'}",
            "DJANGO_DEBUG": "1",
            "DASHBOARD_DEMO_TOKENS": "1",
            "DASHBOARD_HEARTBEAT_SECONDS": str(heartbeat_seconds),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("REDIS_URL", None)  # one process: the in-memory layer
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=self.env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise ServerError(f"manage.py {' '.join(args)} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def prepare(self) -> None:
        """Creates the database; stored demo tokens where the project has them."""
        self.manage("migrate", "--no-input", "-v0")
        if "seed_demo" in self.manage("help", "--commands").split():
            self.manage("seed_demo")

    def start(self) -> None:
        if self.running:
            raise ServerError("the server is already running")
        argv = [
            sys.executable, "-m", "uvicorn", "dashboard_project.asgi:application",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--ws-per-message-deflate", "false", "--log-level", "warning",
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, cwd=PROJECT_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not listen on {self.port} within {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it takes too long."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"


class ProtocolClient:
    """An async protocol client over a real WebSocket. A reader task answers
    the server's pings (so it survives any heartbeat interval), hands replies
    to their requests and keeps pushes."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future] = {}
        self.pushes: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, token: str | None = None) -> "ProtocolClient":
        from websockets.asyncio.client import connect

        ws = await connect(url, max_size=None, ping_interval=None, open_timeout=TIMEOUT)
        welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert welcome["type"] == "welcome", welcome
        client = cls(ws)
        if token is not None:
            await client.ok("auth.login", token=token)
        return client

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            if frame.get("type") == "ping":
                await self.ws.send(json.dumps({"type": "pong", "timestamp": frame["timestamp"]}))
            elif frame.get("type") == "push":
                self.pushes.append(frame)
            elif "id" in frame and frame["id"] in self.replies:
                self.replies.pop(frame["id"]).set_result(frame)

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        request_id = next(self.ids)
        reply = self.replies[request_id] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": request_id, "type": type, **fields}))
        return await asyncio.wait_for(reply, TIMEOUT)

    async def ok(self, type: str, **fields: Any) -> Any:
        reply = await self.request(type, **fields)
        assert reply["type"] == "result", reply
        return reply["data"]

    async def insert_metrics(self, metrics: list[dict[str, Any]], batch: int = 500) -> None:
        """Inserts many metrics, `batch` per transaction."""
        for start in range(0, len(metrics), batch):
            operations = [{"op": "insert", "bucket": "metrics", "data": m} for m in metrics[start : start + batch]]
            await self.ok("store.transaction", operations=operations)

    async def close(self) -> None:
        self.reader.cancel()
        await self.ws.close()


async def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, never a browser downloaded by Playwright."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
