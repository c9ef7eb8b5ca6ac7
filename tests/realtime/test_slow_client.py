"""A viewer that stops reading must not grow the server's memory without
bound or hold up other viewers (real server process, real sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.servers import LiveServer, rss_mib

pytestmark = pytest.mark.multiprocess


async def login(url: str, token: str, **options) -> websockets.ClientConnection:
    ws = await websockets.connect(url, max_size=None, ping_interval=None, **options)
    await ws.recv()
    await ws.send(json.dumps({"id": 1, "type": "auth.login", "token": token}))
    assert json.loads(await ws.recv())["type"] == "result"
    return ws


async def test_stalled_reader_keeps_memory_bounded_and_others_served(tmp_path):
    server = LiveServer(tmp_path, DASHBOARD_HEARTBEAT_SECONDS="3600")
    server.prepare()
    server.start()
    try:
        admin = await login(server.url, "admin-token")
        # max_queue=1: the client library stops reading the socket as soon as
        # one message waits, so the server's writes back up like a stalled browser.
        stalled = await login(server.url, "viewer-token", max_queue=1)
        await stalled.send(json.dumps({"id": 2, "type": "store.subscribe", "query": "all-metrics"}))
        reader = await login(server.url, "viewer-token")
        await reader.send(json.dumps({"id": 2, "type": "store.subscribe", "query": "metric-count"}))
        assert json.loads(await reader.recv())["data"]["data"] == 0
        before = rss_mib(server.proc.pid)

        counts: list[int] = []

        async def read_counts() -> None:
            while not counts or counts[-1] != 10_000:
                frame = json.loads(await reader.recv())
                if frame.get("type") == "push":
                    counts.append(frame["data"])

        reading = asyncio.create_task(read_counts())
        peak = before
        for batch in range(200):  # 10,000 metrics, 50 per transaction
            operations = [
                {
                    "op": "insert",
                    "bucket": "metrics",
                    "data": {"name": f"m{i % 7}", "value": i, "unit": "u", "timestamp": 1_700_000_000_000 + i},
                }
                for i in range(batch * 50, (batch + 1) * 50)
            ]
            await admin.send(json.dumps({"id": 10 + batch, "type": "store.transaction", "operations": operations}))
            assert json.loads(await admin.recv())["type"] == "result"
            peak = max(peak, rss_mib(server.proc.pid))
        await asyncio.wait_for(reading, timeout=30)
        assert counts == sorted(set(counts)) and counts[-1] == 10_000
        assert len(counts) > 20, "the reading viewer kept getting pushes while the other stalled"
        # Every all-metrics result the stalled client missed would be ~1 MB on
        # average (200 of them); coalescing keeps at most one waiting.
        assert peak - before < 100, f"server RSS grew {peak - before:.0f} MiB"

        # When it reads again, it catches up with the latest state.
        last = None
        while True:
            frame = json.loads(await asyncio.wait_for(stalled.recv(), timeout=30))
            data = frame["data"]["data"] if frame.get("type") == "result" else frame["data"]
            last = data
            if len(last) == 10_000:
                break
        assert [r["value"] for r in last] == list(range(10_000))
        for ws in (admin, stalled, reader):
            await ws.close()
    finally:
        server.stop()
