"""Regenerates docs/dashboard.png: a populated dashboard, as an admin sees it at 1280x720.

Starts a server of its own (fresh SQLite database in a temporary directory),
fills it with an hour of readings of six metrics (the charts' default range;
`disk_io` has a four-minute outage, drawn as a gap) over the protocol, adds a
few alerts, then sends the last two minutes, in which `cpu` climbs past its
alert's threshold: the screenshot shows that alert firing (its tile and chart
marked, the threshold drawn), one on a metric that never reported (no data)
and the rest ok. It opens the page in Debian's headless Chromium and saves a
screenshot. Needs the dev requirements and /usr/bin/chromium:

    .venv/bin/python docs/make_screenshot.py [output.png] [--phone]

With --phone it shows the page at 390x844 instead, scrolled to the charts.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser import ProtocolClient, launch_chromium
from tests.servers import LiveServer

OUTPUT = Path(__file__).resolve().parent / "dashboard.png"
VIEWPORT = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
READINGS = 360  # per metric: one every 10 s for an hour
OUTAGE = ("disk_io", range(250, 274))  # readings left out: four minutes without data
LIVE = 12  # the last two minutes of readings are sent after the alerts exist
SPIKE = ("cpu", 86, 0.8)  # during them cpu reads 86 % and climbs 0.8 % a reading

# name, unit, baseline, daily-ish swing, noise, lower bound
METRICS = [
    ("cpu", "%", 48, 22, 6, 0),
    ("memory", "B", 6.1e9, 7e8, 6e7, 0),
    ("latency_p95", "ms", 180, 60, 25, 5),
    ("requests", "req/s", 950, 300, 70, 0),
    ("disk_io", "MB/s", 42, 18, 9, 0),
    ("temperature", "°C", 61, 6, 1.2, 20),
]


def readings(now_ms: int) -> list[dict]:
    rng = random.Random(20240201)
    rows = []
    for i in range(READINGS):
        t = now_ms - (READINGS - 1 - i) * 10_000
        for k, (name, unit, base, swing, noise, floor) in enumerate(METRICS):
            if name == OUTAGE[0] and i in OUTAGE[1]:
                continue
            wave = math.sin(i / 56 + k) + 0.35 * math.sin(i / 15 + 2 * k)
            value = max(floor, base + swing * wave + rng.gauss(0, noise))
            if name == SPIKE[0] and i >= READINGS - LIVE:
                value = SPIKE[1] + SPIKE[2] * (i - READINGS + LIVE) + rng.gauss(0, 1.5)
            rows.append({"name": name, "value": round(value, 1), "unit": unit, "timestamp": t})
    return rows


def alerts(now_ms: int) -> list[dict]:
    minute = 60_000
    return [
        {"metric": "temperature", "threshold": 75, "severity": "low", "timestamp": now_ms - 26 * minute},
        {"metric": "disk_io", "threshold": 80, "severity": "medium", "timestamp": now_ms - 17 * minute},
        {"metric": "latency_p95", "threshold": 300, "severity": "medium", "timestamp": now_ms - 9 * minute},
        {"metric": "gpu.temperature", "threshold": 85, "severity": "medium", "timestamp": now_ms - 5 * minute},
        {"metric": "cpu", "threshold": 85, "severity": "high", "timestamp": now_ms - 3 * minute},
    ]


async def populate(server: LiveServer) -> None:
    now_ms = int(time.time() * 1000)
    rows = readings(now_ms)
    live_from = now_ms - (LIVE - 1) * 10_000
    admin = await ProtocolClient.open(server.ws, "admin-token")
    try:
        await admin.insert_metrics([row for row in rows if row["timestamp"] < live_from])
        for alert in alerts(now_ms):
            await admin.ok("store.insert", bucket="alerts", data=alert)
        # As a collector sends them: one transaction per sample.
        await admin.insert_metrics([row for row in rows if row["timestamp"] >= live_from], batch=len(METRICS))
    finally:
        await admin.close()


async def screenshot(server: LiveServer, output: Path, phone: bool = False) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            page = await browser.new_page(viewport=PHONE if phone else VIEWPORT)
            await page.goto(f"{server.http}/#token=admin-token")
            await page.wait_for_selector('#connection[data-state="live"]')
            await page.wait_for_function(
                "document.querySelectorAll('#charts .chart-card[data-points]').length === 4"
                " && document.querySelectorAll('#latest tr').length > 0"
                " && document.querySelectorAll('#alerts li').length === 5"
                " && document.querySelectorAll('#alerts li[data-state=\"firing\"]').length === 1"
                " && document.querySelectorAll('#charts .chart-card[data-alert=\"firing\"]').length === 1"
            )
            if phone:
                await page.locator("#tiles .tile").nth(4).scroll_into_view_if_needed()
            # Let the last frame (and the table's arrival highlight) settle.
            await page.wait_for_timeout(2000)
            await page.screenshot(path=str(output))
        finally:
            await browser.close()


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--phone"]
    phone = "--phone" in sys.argv[1:]
    output = Path(args[0]) if args else OUTPUT
    with tempfile.TemporaryDirectory(prefix="dashboard-shot-") as workdir:
        server = LiveServer(Path(workdir))
        server.prepare()
        server.start()
        try:
            asyncio.run(populate(server))
            asyncio.run(screenshot(server, output, phone))
        finally:
            server.stop()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
