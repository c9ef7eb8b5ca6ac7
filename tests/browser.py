"""A protocol client over a real WebSocket and Debian's headless Chromium: shared by the
browser tests and `docs/make_screenshot.py` (the server they drive is `tests.servers.LiveServer`)."""
from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT = 5.0


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
