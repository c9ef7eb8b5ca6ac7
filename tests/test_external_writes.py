"""One server on SQLite without Redis still pushes what other processes write
(a shell, `prune_metrics`): it watches SQLite's data_version."""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.servers import LiveServer

pytestmark = pytest.mark.multiprocess

SHELL_INSERT = (
    "from metrics.models import Metric; "
    "Metric.objects.create(name='cpu', value=1, unit='%', timestamp=0); "
    "Metric.objects.create(name='cpu', value=2, unit='%', timestamp=9e15)"
)


async def next_push(ws: websockets.ClientConnection, timeout: float = 10) -> dict:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] == "push":
            return frame


@pytest.fixture
def server(tmp_path):
    server = LiveServer(tmp_path, DASHBOARD_EXTERNAL_WRITES_POLL_SECONDS="0.2", DASHBOARD_HEARTBEAT_SECONDS="3600")
    server.prepare()
    server.start()
    yield server
    server.stop()


async def test_writes_from_a_shell_and_a_prune_reach_subscribers(server):
    async with websockets.connect(server.url) as ws:
        await ws.recv()
        await ws.send(json.dumps({"id": 1, "type": "auth.login", "token": "viewer-token"}))
        await ws.recv()
        await ws.send(json.dumps({"id": 2, "type": "store.subscribe", "query": "metric-count"}))
        reply = json.loads(await ws.recv())
        assert reply["data"]["data"] == 0
        subscription_id = reply["data"]["subscriptionId"]

        returncode, _, stderr = await server.manage_async("shell", "-c", SHELL_INSERT)
        assert returncode == 0, stderr
        # The two creates are two commits: the push carries one or both, the
        # last one always the final count.
        push = await next_push(ws)
        if push["data"] == 1:
            push = await next_push(ws)
        assert push == {"type": "push", "channel": "subscription", "subscriptionId": subscription_id, "data": 2}

        returncode, _, stderr = await server.manage_async("prune_metrics", "--older-than", "1d")
        assert returncode == 0, stderr
        assert await next_push(ws) == {"type": "push", "channel": "subscription",
                                       "subscriptionId": subscription_id, "data": 1}

        # Nothing changed since: no push however long the watcher polls.
        with pytest.raises(asyncio.TimeoutError):
            await next_push(ws, timeout=1.0)
