"""The README's first command, `./dev run`, serves the page, its static files
and the protocol with the demo tokens, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
import websockets

from bench.servers import Process, free_port, server_env

pytestmark = pytest.mark.multiprocess


def page_and_script_are_served(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
        assert page.status == 200 and b"/static/dashboard/dashboard.js" in page.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/dashboard/dashboard.js", timeout=10) as script:
        assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")


async def test_dev_run_serves_the_page_and_the_protocol_with_the_demo_tokens(tmp_path):
    port = free_port()
    env = server_env(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    env.pop("DJANGO_DEBUG")  # as a user runs it: DEBUG is on by default
    server = Process(
        "dev-run",
        ["./dev", "run", f"127.0.0.1:{port}"],
        env,
        tmp_path / "dev-run.log",
        port,
        start_timeout=120,
        stop_timeout=15,
    )
    server.start()
    try:
        await asyncio.to_thread(page_and_script_are_served, port)

        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/") as ws:
            welcome = json.loads(await ws.recv())
            assert welcome == {
                "type": "welcome",
                "version": "1.0.0",
                "serverTime": welcome["serverTime"],
                "requiresAuth": True,
            }
            await ws.send(json.dumps({"id": 1, "type": "auth.login", "token": "admin-token"}))
            assert json.loads(await ws.recv()) == {
                "id": 1,
                "type": "result",
                "data": {"userId": "admin-1", "roles": ["admin"], "expiresAt": None},
            }
    finally:
        server.stop()
    # uvicorn re-raises SIGTERM once it has shut down gracefully.
    assert server.proc.returncode in (0, -15), server.log()[-3000:]
    assert "Application shutdown complete." in server.log() and "Traceback" not in server.log()
    assert "Warning" not in server.log()
