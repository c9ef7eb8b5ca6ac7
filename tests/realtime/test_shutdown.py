"""Graceful shutdown of a real server process: the system frame, then close
1000 server_shutdown; connections opened meanwhile are turned away."""

from __future__ import annotations

import json
import signal
import time

import pytest
import websockets

from tests.servers import LiveServer

pytestmark = pytest.mark.multiprocess


async def test_sigterm_sends_shutdown_frame_then_closes_1000(tmp_path):
    server = LiveServer(tmp_path, DASHBOARD_SHUTDOWN_GRACE_MS="500")
    server.prepare()
    server.start()
    try:
        ws = await websockets.connect(server.url, max_size=None, ping_interval=None)
        assert json.loads(await ws.recv())["type"] == "welcome"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert json.loads(await ws.recv()) == {"type": "system", "event": "shutdown", "gracePeriodMs": 500}
        # During the grace period new connections are turned away.
        late = await websockets.connect(server.url, max_size=None, ping_interval=None)
        with pytest.raises(websockets.ConnectionClosed) as refused:
            await late.recv()
        assert (refused.value.rcvd.code, refused.value.rcvd.reason) == (1001, "server_shutting_down")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "server_shutdown")
        assert time.monotonic() - started >= 0.45
        assert server.proc.wait(timeout=10) is not None  # then the process exits
    finally:
        server.stop()
