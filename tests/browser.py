"""dashboard_client's client and Debian's headless Chromium: shared by the browser tests
and `docs/make_screenshot.py` (the server they drive is `tests.servers.LiveServer`)."""

from __future__ import annotations

from typing import Any

from dashboard_client import Backoff, DashboardClient

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT = 5.0


class ProtocolClient(DashboardClient):
    """A DashboardClient (it answers pings, so it survives any heartbeat
    interval, and reconnects quickly after a server restart) with the few
    helpers the browser tests and the screenshot script call."""

    @classmethod
    async def open(cls, url: str, token: str | None = None) -> ProtocolClient:
        client = cls(
            url, token, backoff=Backoff(initial=0.05, maximum=0.5), request_timeout=TIMEOUT, open_timeout=TIMEOUT
        )
        await client.connect()
        return client

    async def ok(self, type: str, **fields: Any) -> Any:
        """Any request by its protocol name: its result data (an error raises DashboardError)."""
        return await self.request(type, **fields)

    async def insert_metrics(self, metrics: list[dict[str, Any]], batch: int = 500) -> None:
        """Inserts many metrics, `batch` per transaction."""
        for start in range(0, len(metrics), batch):
            await self.transaction(
                [{"op": "insert", "bucket": "metrics", "data": m} for m in metrics[start : start + batch]]
            )


async def launch_chromium(playwright: Any) -> Any:
    """Debian's chromium, never a browser downloaded by Playwright."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
