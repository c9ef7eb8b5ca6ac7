"""The dashboard page in a real headless Chromium, against a real server process.

The page is a client of the protocol like any other: these tests push with a
separate WebSocket client (or the page's own admin forms) and watch other
pages update without a reload. The server runs with a one-second heartbeat,
so every page here must answer pings to stay connected.

Needs /usr/bin/chromium (`.ci/run` installs it) and Playwright's Python
package (its driver only: the browser is Debian's). Without them the tests
skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.browser import CHROMIUM, ProtocolClient, launch_chromium
from tests.servers import LiveServer, free_port, unavailable

# One event loop for the module, so that one Playwright driver and one
# browser serve every test (each page still gets a fresh browser context).
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

WALL = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}
HEARTBEAT_SECONDS = 1
LOGIN_DEADLINE_SECONDS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        # The page's server always runs on a SQLite file of its own, so a
        # second pass would only repeat the first.
        pytest.skip("the browser tests run their own SQLite server: they ran in the SQLite pass")
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed: pip install -r requirements-dev.txt")
    server = LiveServer(
        tmp_path_factory.mktemp("browser"),
        DASHBOARD_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        DASHBOARD_LOGIN_DEADLINE_SECONDS=str(LOGIN_DEADLINE_SECONDS),
    )
    server.prepare()
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def admin(server):
    """An admin protocol client, separate from any page; the store starts empty."""
    client = await ProtocolClient.open(server.ws, "admin-token")
    await client.ok("store.clear", bucket="metrics")
    await client.ok("store.clear", bucket="alerts")
    yield client
    await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(server):
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=10_000)
    async with async_playwright() as playwright:
        browser = await launch_chromium(playwright)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(server, browser):
    """Opens the dashboard in a fresh browser context (its own session
    storage), logged in through the kiosk fragment when given a token. Fails
    the test if a page raised a JavaScript error."""
    errors: list[str] = []
    contexts: list[Any] = []

    async def open_(
        token: str | None = None, viewport: dict = WALL, wait_live: bool = True, bypass_csp: bool = False
    ) -> Any:
        context = await browser.new_context(viewport=viewport, locale="en-US", bypass_csp=bypass_csp)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: console_error(message, errors))
        await page.goto(server.http + (f"/#token={token}" if token else "/"))
        if wait_live:
            await wait_live_page(page)
        return page

    yield open_
    for context in contexts:
        await context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}\n--- server log ---\n{server.log()}"


def console_error(message: Any, errors: list[str]) -> None:
    # A refused connection while the server is down is logged by the browser
    # itself; the page handles it by reconnecting.
    if message.type == "error" and not message.text.startswith("WebSocket connection to"):
        errors.append(message.text)


async def wait_live_page(page: Any) -> None:
    from playwright.async_api import expect

    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    await expect(page.locator("#dashboard")).to_be_visible()


def metric(name: str, value: float, unit: str = "%", timestamp: int | None = None) -> dict:
    return {"name": name, "value": value, "unit": unit, "timestamp": timestamp or int(time.time() * 1000)}


# Everything a push of one metric must change on a page, checked at once:
# `readings` is how many readings of that name the chart's series holds.
SHOWS_METRIC = """([name, value, count, readings]) => {
  const tile = document.querySelector(`#tiles .tile[data-name="${name}"]`);
  const chart = document.querySelector(`#charts .chart-card[data-name="${name}"]`);
  const row = document.querySelector("#latest tr");
  return document.querySelector("#metric-count").textContent === String(count)
    && row !== null && row.querySelector(".name").textContent === name
    && row.querySelector(".value").textContent === String(value)
    && tile !== null && tile.querySelector('[data-field="last"]').textContent === String(value)
    && chart !== null && chart.dataset.readings === String(readings);
}"""


# --- charts: metric-series over the chosen time range -----------------------------

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# Each chart's subscription and the result it drew, by name.
CHART_STATES = """() => Object.fromEntries([...document.querySelectorAll('#charts .chart-card')].map((c) => {
  const d = c.dataset;
  return [d.name, {
    params: JSON.parse(d.params), from: +d.from, to: +d.to, step: +d.step, points: +d.points,
    readings: +d.readings, gaps: JSON.parse(d.gaps), nulls: +d.nulls, xMin: +d.xMin, xMax: +d.xMax,
  }];
}))"""

# Whether every chart subscribed to `range` ({last} or {from, to}) and drew
# the result of that subscription over its range.
SHOWS_RANGE = """(range) => {
  const cards = [...document.querySelectorAll('#charts .chart-card')];
  return cards.length > 0 && cards.every((c) => {
    const d = c.dataset;
    if (!d.params || d.from === undefined || d.xMin === undefined) return false;
    const p = JSON.parse(d.params);
    const [from, to, step] = [+d.from, +d.to, +d.step];
    const drawn = +d.xMin === from && +d.xMax === to;
    if ("last" in range) {
      return p.last === range.last && !("from" in p) && Math.abs(to - from - range.last) <= step && drawn;
    }
    return p.from === range.from && p.to === range.to && !("last" in p) && from === range.from && to === range.to && drawn;
  });
}"""


def buckets_of(timestamps: list[int], step: int) -> tuple[list[int], list[list[int]]]:
    """The step-aligned buckets that readings at `timestamps` fall in, and the
    gaps between them ([end of a bucket, start of the next one after it])."""
    starts = sorted({ts // step * step for ts in timestamps})
    gaps = [[a + step, b] for a, b in itertools.pairwise(starts) if b - a > step]
    return starts, gaps


async def plot_box(page: Any, name: str) -> dict:
    """The plotting area of a chart (uPlot's overlay), in page pixels."""
    return await page.locator(f'#charts .chart-card[data-name="{name}"] .u-over').bounding_box()


async def test_viewer_page_shows_a_push_from_another_client_within_one_second(admin, open_page):
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 10))
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_METRIC, arg=["cpu", "10", 1, 1])
    await page.evaluate("window.notReloaded = true")

    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 72.5))
    await page.wait_for_function(SHOWS_METRIC, arg=["cpu", "72.5", 2, 2], timeout=1000)

    assert await page.evaluate("window.notReloaded") is True
    tile = page.locator('#tiles .tile[data-name="cpu"]')
    assert await tile.locator("dd").all_inner_texts() == ["10", "72.5", "41.25", "2"]  # min max avg count
    assert await tile.locator('[data-field="unit"]').inner_text() == "%"
    chart = page.locator('#charts .chart-card[data-name="cpu"]')
    assert await chart.get_attribute("data-query") == "metric-series"
    assert await chart.get_attribute("data-axis-label") == "value (%)"
    assert await page.locator("#latest tr").count() == 2


async def test_admin_form_pushes_a_metric_that_a_viewer_page_sees(admin, open_page):
    from playwright.async_api import expect

    viewer = await open_page("viewer-token")
    admin_page = await open_page("admin-token")
    await expect(admin_page.locator("#admin-panel")).to_be_visible()

    await admin_page.get_by_label("Name", exact=True).fill("disk")
    await admin_page.get_by_label("Value", exact=True).fill("41.5")
    await admin_page.get_by_label("Unit", exact=True).fill("GB")
    await admin_page.get_by_role("button", name="Push metric").click()
    await expect(admin_page.locator("#admin-status")).to_have_text("Pushed disk = 41.5 GB")
    await viewer.wait_for_function(SHOWS_METRIC, arg=["disk", "41.5", 1, 1], timeout=1000)
    [stored] = await admin.ok("store.all", bucket="metrics")
    assert (stored["name"], stored["value"], stored["unit"]) == ("disk", 41.5, "GB")

    # The alert form: the viewer sees it with its severity's colours.
    await admin_page.get_by_label("Metric", exact=True).fill("disk")
    await admin_page.get_by_label("Threshold").fill("40")
    await admin_page.get_by_label("Severity").select_option("high")
    await admin_page.get_by_role("button", name="Create alert").click()
    alert = viewer.locator("#alerts li")
    await expect(alert).to_have_count(1)
    await expect(alert).to_have_attribute("data-severity", "high")
    await expect(alert).to_have_attribute("data-state", "firing")
    await expect(alert).to_contain_text("disk above 40")
    badge = alert.locator(".severity")
    assert await badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(220, 38, 38)"

    # Clearing asks first, then empties every page.
    admin_page.once("dialog", lambda dialog: dialog.accept())
    await admin_page.get_by_role("button", name="Clear all metrics").click()
    await expect(viewer.locator("#metric-count")).to_have_text("0")
    await expect(viewer.locator("#tiles .tile")).to_have_count(0)
    await expect(viewer.locator("#latest tr")).to_have_count(0)
    await expect(viewer.locator("#charts .chart-card")).to_have_count(0)


async def test_viewer_page_shows_no_admin_controls(admin, open_page):
    from playwright.async_api import expect

    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    page = await open_page("viewer-token")
    await expect(page.locator("#tiles .tile")).to_have_count(1)
    await expect(page.locator("#user-name")).to_have_text("viewer-1")
    await expect(page.locator("#user-role")).to_have_text("viewer")
    assert await page.locator("#admin-panel").count() == 0
    for name in ("Push metric", "Create alert", "Clear all metrics"):
        assert await page.get_by_role("button", name=name).count() == 0
    assert await page.locator("#dashboard form").count() == 0


async def test_login_form_remembers_the_token_for_the_browser_session(server, open_page):
    from playwright.async_api import expect

    page = await open_page(wait_live=False)
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    for hidden in ("#dashboard", "#user", "#count-badge"):
        await expect(page.locator(hidden)).to_be_hidden()

    await page.get_by_label("Access token").fill("not-a-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-error")).to_have_text("Invalid token")

    await page.get_by_label("Access token").fill("admin-token")
    await page.get_by_role("button", name="Log in").click()
    await wait_live_page(page)
    await expect(page.locator("#user-name")).to_have_text("admin-1")
    await expect(page.locator("#user-role")).to_have_text("admin")

    await page.reload()
    await wait_live_page(page)
    await expect(page.locator("#user-name")).to_have_text("admin-1")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#user")).to_be_hidden()
    await expect(page.locator("#admin-panel")).to_have_count(0)
    await page.reload()
    await expect(page.locator("#login")).to_be_visible()


async def test_kiosk_fragment_logs_in_and_leaves_the_address_bar(server, open_page):
    from playwright.async_api import expect

    page = await open_page("viewer-token")
    await expect(page.locator("#user-name")).to_have_text("viewer-1")
    assert page.url == f"{server.http}/"
    assert await page.evaluate("location.hash") == ""
    # Replaced, not pushed: going back does not bring the token back either.
    await page.go_back()
    assert "token" not in page.url


async def test_login_form_waits_quietly_after_the_servers_login_deadline(server, open_page):
    """The server closes a connection that has not logged in (4004): the
    page shows it waits for a token instead of reconnecting in a loop, and
    connects again when one is given."""
    from playwright.async_api import expect

    page = await open_page(wait_live=False)
    await expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "idle", timeout=(LOGIN_DEADLINE_SECONDS + 3) * 1000
    )
    await expect(page.locator("#connection-text")).to_have_text("Waiting for a token")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.locator("#login-error").text_content() == ""
    await page.get_by_label("Access token").fill("viewer-token")
    await page.get_by_role("button", name="Log in").click()
    await wait_live_page(page)
    await expect(page.locator("#user-name")).to_have_text("viewer-1")


async def test_kiosk_fragment_opened_in_a_tab_already_on_the_page_logs_in(server, open_page):
    """Only the fragment changes (no reload): the page takes the token on
    hashchange and leaves neither the address bar nor history with it."""
    from playwright.async_api import expect

    page = await open_page(wait_live=False)
    await expect(page.locator("#login")).to_be_visible()
    history_length = await page.evaluate("history.length")
    await page.evaluate("location.hash = '#token=viewer-token'")
    await wait_live_page(page)
    await expect(page.locator("#user-name")).to_have_text("viewer-1")
    assert page.url == f"{server.http}/"
    assert "token" not in await page.evaluate("location.href")
    # The fragment's history entry was replaced by the clean address.
    assert await page.evaluate("history.length") == history_length + 1
    await page.go_back()
    assert "token" not in page.url


async def test_page_is_served_with_a_content_security_policy(server, open_page):
    """Every test here fails on a console error, which a CSP violation is; this
    one checks the policy itself."""
    page = await open_page("viewer-token")
    response = await page.request.get(server.http + "/")
    host = server.http.split("://", 1)[1]
    assert response.headers["content-security-policy"] == (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    )
    violations = await page.evaluate("""() => new Promise((resolve) => {
      const seen = [];
      document.addEventListener("securitypolicyviolation", (e) => seen.push(e.violatedDirective));
      setTimeout(() => resolve(seen), 300);
    })""")
    assert violations == []


async def test_page_reconnects_and_resubscribes_after_a_server_restart(server, admin, open_page):
    from playwright.async_api import expect

    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 5))
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_METRIC, arg=["cpu", "5", 1, 1])
    connection = page.locator("#connection")
    assert await connection.get_attribute("data-connects") == "1"

    await admin.close()
    await asyncio.to_thread(server.stop)
    await expect(connection).not_to_have_attribute("data-state", "live")
    await expect(page.locator("#stale")).to_be_visible()
    await asyncio.to_thread(server.start)

    # Backoff, then re-login and resubscribe on its own.
    await expect(connection).to_have_attribute("data-state", "live", timeout=20_000)
    await expect(connection).to_have_attribute("data-connects", "2")
    await expect(page.locator("#stale")).to_be_hidden()
    again = await ProtocolClient.open(server.ws, "admin-token")
    try:
        await again.ok("store.insert", bucket="metrics", data=metric("cpu", 6))
        await page.wait_for_function(SHOWS_METRIC, arg=["cpu", "6", 2, 2], timeout=1000)
        await again.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 5, "timestamp": 1})
        await expect(page.locator("#alerts li")).to_have_count(1)
    finally:
        await again.close()


async def test_reconnect_delays_back_off_exponentially_with_jitter(server, open_page):
    # The client library against a port where nothing listens: the page's own
    # policy rightly allows connections to its server only.
    page = await open_page(wait_live=False, bypass_csp=True)
    free = free_port()  # nothing listens there
    delays = await page.evaluate(
        """async (url) => {
          const { ProtocolClient } = await import("/static/dashboard/protocol.js");
          const client = new ProtocolClient(url, { minDelayMs: 20, maxDelayMs: 160 });
          const delays = [];
          const seven = new Promise((done) => client.addEventListener("state", (event) => {
            if (event.detail.state !== "waiting") return;
            delays.push(event.detail.delayMs);
            if (delays.length === 7) done();
          }));
          client.start();
          await Promise.race([seven, new Promise((done) => setTimeout(done, 5000))]);
          client.stop();
          return delays;
        }""",
        f"ws://127.0.0.1:{free}/ws/",
    )
    ceilings = [20, 40, 80, 160, 160, 160, 160]
    assert len(delays) == 7, delays
    # Each delay lies in [ceiling / 2, ceiling]: half fixed, half random.
    assert all(c / 2 - 1 <= d <= c for d, c in zip(delays, ceilings, strict=False)), delays
    assert len(set(delays[3:])) > 1, f"no jitter: {delays}"


async def test_page_answers_heartbeat_pings(server, open_page):
    page = await open_page("viewer-token")
    # Unanswered pings close a connection after two intervals (4001). Being
    # still on the first connection after several proves the page answered:
    # waiting is the point here, there is nothing to await.
    await page.wait_for_timeout(HEARTBEAT_SECONDS * 3500)
    connection = page.locator("#connection")
    assert await connection.get_attribute("data-state") == "live"
    assert await connection.get_attribute("data-connects") == "1"


async def test_ten_thousand_metrics_bounded_windows_and_incremental_updates(admin, open_page):
    from playwright.async_api import expect

    names = ["cpu", "disk", "memory", "net", "temp"]
    start = int(time.time() * 1000) - 10_000 * 1000
    readings = [metric(names[i % 5], i % 97, "u", start + i * 1000) for i in range(10_000)]
    await admin.insert_metrics(readings, batch=1000)

    began = time.monotonic()
    page = await open_page("viewer-token")
    await expect(page.locator("#metric-count")).to_have_text("10,000")
    await expect(page.locator("#charts .chart-card[data-points]")).to_have_count(4)
    loaded = time.monotonic() - began

    # Bounded windows: n table rows, one tile per name, and per chart at most
    # the points it asked for, holding every reading of its name in the hour shown.
    assert await page.locator("#latest tr").count() == 12
    assert await page.locator("#tiles .tile").count() == 5
    for name, state in (await page.evaluate(CHART_STATES)).items():
        in_range = [r for r in readings if r["name"] == name and state["from"] <= r["timestamp"] < state["to"]]
        assert state["params"]["last"] == HOUR_MS
        assert (state["readings"], state["points"] <= state["params"]["points"]) == (len(in_range), True), state
    assert await page.evaluate("document.getElementsByTagName('*').length") < 1000

    # A fixed range over all of them, remembered by the tab: 2,000 readings
    # per chart, still in no more points than it asked for.
    fixed = {"from": start, "to": start + 10_060_000, "back": HOUR_MS}
    await page.evaluate("(range) => sessionStorage.setItem('dashboard.range', JSON.stringify(range))", fixed)
    await page.reload()
    await wait_live_page(page)
    await page.wait_for_function(SHOWS_RANGE, arg=fixed)
    states = await page.evaluate(CHART_STATES)
    assert {name: s["readings"] for name, s in states.items()} == dict.fromkeys(names[:4], 2000)
    assert all(0 < s["points"] <= s["params"]["points"] for s in states.values()), states

    # The viewer picks n: the table follows.
    await page.get_by_label("Rows").fill("30")
    await expect(page.locator("#latest tr")).to_have_count(30)

    # A push touches what changed: the other rows, tiles and charts stay as
    # they are (a fixed range does not slide, so nothing else redraws them).
    await page.evaluate("""() => {
      window.kept = [...document.querySelectorAll('#latest tr, #tiles .tile')];
      window.rendersBefore = Object.fromEntries(
        [...document.querySelectorAll('#charts .chart-card')].map(c => [c.dataset.name, c.dataset.renders]));
    }""")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 123.25, "u", start + 10_000 * 1000))
    await page.wait_for_function(SHOWS_METRIC, arg=["cpu", "123.25", "10,001", 2001], timeout=1000)
    kept = await page.evaluate("""() => ({
      rows: window.kept.filter(e => e.tagName === 'TR' && e.isConnected).length,
      tiles: window.kept.filter(e => e.tagName === 'ARTICLE' && e.isConnected).length,
      renders: Object.fromEntries(
        [...document.querySelectorAll('#charts .chart-card')].map(c => [c.dataset.name, c.dataset.renders])),
      before: window.rendersBefore,
    })""")
    assert kept["rows"] == 29  # one row left the window, one came in
    assert kept["tiles"] == 5
    assert int(kept["renders"]["cpu"]) == int(kept["before"]["cpu"]) + 1
    assert {k: v for k, v in kept["renders"].items() if k != "cpu"} == {
        k: v for k, v in kept["before"].items() if k != "cpu"
    }
    assert loaded < 10, f"the page took {loaded:.1f} s to show 10,000 metrics"


async def test_charts_subscribe_to_metric_series_over_the_last_hour(admin, open_page):
    now = int(time.time() * 1000)
    # Every 7 s for the last 3.5 minutes, and one reading 2 hours ago, outside the hour.
    stamps = [now - 210_000 + i * 7_000 for i in range(30)]
    await admin.insert_metrics([metric("cpu", i, "%", ts) for i, ts in enumerate(stamps)])
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 99, "%", now - 2 * HOUR_MS))
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})

    state = (await page.evaluate(CHART_STATES))["cpu"]
    box = await plot_box(page, "cpu")
    step = state["step"]
    starts, gaps = buckets_of(stamps, step)
    # About one point per two pixels of plot width.
    assert abs(state["params"]["points"] - box["width"] / 2) <= 1, (state, box)
    assert state == {
        "params": {"name": "cpu", "points": state["params"]["points"], "last": HOUR_MS},
        "from": state["from"],
        "to": state["to"],
        "step": step,
        "points": len(starts),
        "readings": 30,
        "gaps": gaps,
        "nulls": len(gaps),
        "xMin": state["from"],
        "xMax": state["to"],
    }
    assert (state["from"] % step, state["to"] % step, state["to"] > stamps[-1]) == (0, 0, True)
    assert await page.locator("#range-hint").inner_text() == "(last 1 h, live)"
    assert await page.locator("#range-picker [aria-pressed=true]").all_inner_texts() == ["1 h"]


async def test_a_preset_or_a_narrower_chart_changes_every_charts_subscription(server, admin, open_page):
    from playwright.async_api import expect

    now = int(time.time() * 1000)
    await admin.insert_metrics([metric(name, 1, "%", now - 1000) for name in ("cpu", "memory")])
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})

    await page.get_by_role("button", name="5 min").click()
    await page.wait_for_function(SHOWS_RANGE, arg={"last": 5 * MINUTE_MS})
    await expect(page.locator("#range-hint")).to_have_text("(last 5 min, live)")
    assert await page.locator("#range-picker [aria-pressed=true]").all_inner_texts() == ["5 min"]
    states = await page.evaluate(CHART_STATES)
    assert {name: s["readings"] for name, s in states.items()} == {"cpu": 1, "memory": 1}

    # The tab remembers it.
    await page.reload()
    await wait_live_page(page)
    await page.wait_for_function(SHOWS_RANGE, arg={"last": 5 * MINUTE_MS})
    await page.get_by_role("button", name="7 d").click()
    await page.wait_for_function(SHOWS_RANGE, arg={"last": 7 * DAY_MS})
    await expect(page.locator("#range-hint")).to_have_text("(last 7 d, live)")

    # On a narrower screen the charts stack, one to a row and wider: each
    # asks again, for as many points as its new width holds.
    before = (await page.evaluate(CHART_STATES))["cpu"]["params"]["points"]
    await page.set_viewport_size({"width": 700, "height": 720})
    await page.wait_for_function(
        """(before) => [...document.querySelectorAll('#charts .chart-card')].every((c) => {
          const points = JSON.parse(c.dataset.params).points;
          const width = c.querySelector('.u-over').getBoundingClientRect().width;
          return points > before * 1.2 && Math.abs(points - width / 2) <= 1;
        })""",
        arg=before,
    )
    await page.wait_for_function(SHOWS_RANGE, arg={"last": 7 * DAY_MS})


async def test_dragging_across_a_chart_picks_a_fixed_range_until_back_to_live(admin, open_page):
    from playwright.async_api import expect

    now = int(time.time() * 1000)
    await admin.insert_metrics(
        [metric(name, i, "%", now - 50 * MINUTE_MS + i * MINUTE_MS) for i in range(50) for name in ("cpu", "memory")]
    )
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})
    before = (await page.evaluate(CHART_STATES))["memory"]
    box = await plot_box(page, "memory")

    # Drag from a quarter to three quarters of the memory chart's width.
    y = box["y"] + box["height"] / 2
    await page.mouse.move(box["x"] + box["width"] * 0.25, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=8)
    await page.mouse.up()

    per_px = (before["xMax"] - before["xMin"]) / box["width"]
    # The page picks the range once the drag ends (then every chart resubscribes).
    changed = await page.wait_for_function(
        """() => { const p = document.querySelector('#charts .chart-card[data-name="cpu"]').dataset.params;
                   return "from" in JSON.parse(p) && p; }"""
    )
    params = json.loads(await changed.json_value())
    fixed = {"from": params["from"], "to": params["to"]}
    expected_from = before["xMin"] + 0.25 * (before["xMax"] - before["xMin"])
    expected_to = before["xMin"] + 0.75 * (before["xMax"] - before["xMin"])
    assert abs(fixed["from"] - expected_from) <= 2 * per_px and abs(fixed["to"] - expected_to) <= 2 * per_px, fixed
    # Every chart shows that range, fixed: the result echoes it.
    await page.wait_for_function(SHOWS_RANGE, arg=fixed)
    states = await page.evaluate(CHART_STATES)
    in_range = len([i for i in range(50) if fixed["from"] <= now - 50 * MINUTE_MS + i * MINUTE_MS <= fixed["to"]])
    assert {name: s["readings"] for name, s in states.items()} == {"cpu": in_range, "memory": in_range}
    picker = page.locator("#range-picker")
    await expect(picker).to_have_attribute("data-range", "fixed")
    assert await picker.locator("[aria-pressed=true]").count() == 0
    await expect(page.locator("#range-hint")).to_contain_text("fixed")

    # Remembered by the tab too; then back to the live hour.
    await page.reload()
    await wait_live_page(page)
    await page.wait_for_function(SHOWS_RANGE, arg=fixed)
    await page.get_by_role("button", name="Back to live (1 h)").click()
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})
    await expect(picker).to_have_attribute("data-range", "live")
    await expect(page.get_by_role("button", name="Back to live (1 h)")).to_be_hidden()
    assert await picker.locator("[aria-pressed=true]").all_inner_texts() == ["1 h"]


async def test_an_outage_between_two_bursts_is_drawn_as_a_gap(admin, open_page):
    now = int(time.time() * 1000)
    # Two bursts of ten seconds, a reading every 250 ms, three minutes apart.
    first = [now - 240_000 + i * 250 for i in range(40)]
    second = [now - 60_000 + i * 250 for i in range(40)]
    await admin.insert_metrics([metric("cpu", 10 + i % 7, "%", ts) for i, ts in enumerate(first + second)])
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})
    await page.get_by_role("button", name="5 min").click()
    await page.wait_for_function(SHOWS_RANGE, arg={"last": 5 * MINUTE_MS})

    state = (await page.evaluate(CHART_STATES))["cpu"]
    starts, gaps = buckets_of(first + second, state["step"])
    outage = [first[-1] // state["step"] * state["step"] + state["step"], second[0] // state["step"] * state["step"]]
    assert outage in gaps, (outage, gaps, state)
    # The chart was given a null in every gap, and only there.
    assert (state["points"], state["readings"], state["gaps"], state["nulls"]) == (len(starts), 80, gaps, len(gaps))


async def test_bytes_are_scaled_and_the_readout_follows_the_pointer(admin, open_page):
    from playwright.async_api import expect

    now = int(time.time() * 1000)
    await admin.insert_metrics(
        [metric("disk.used", 1536, "B", now - 20 * MINUTE_MS), metric("net.rx", 3 * 1024**2, "bytes/s", now - 1000)]
    )
    page = await open_page("viewer-token")
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})

    tile = page.locator('#tiles .tile[data-name="disk.used"]')
    assert await tile.locator(".tile-last").inner_text() == "1.5 KiB"
    assert await tile.locator("dd").all_inner_texts() == ["1.5 KiB", "1.5 KiB", "1.5 KiB", "1"]
    net = page.locator('#tiles .tile[data-name="net.rx"]')
    assert await net.locator(".tile-last").inner_text() == "3 MiB/s"
    rows = await page.locator("#latest tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('.name, .value, .unit')].map(c => c.textContent))"
    )
    assert rows == [["net.rx", "3", "MiB/s"], ["disk.used", "1.5", "KiB"]]
    card = page.locator('#charts .chart-card[data-name="disk.used"]')
    assert await card.get_attribute("data-axis-label") == "value (KiB)"
    assert (
        await page.locator('#charts .chart-card[data-name="net.rx"]').get_attribute("data-axis-label")
        == "value (MiB/s)"
    )
    # The lone reading is drawn as a point of its own.
    assert await card.get_attribute("data-marked") == "1"

    # Under the pointer: the bucket's time, its value with min and max, and the unit.
    state = (await page.evaluate(CHART_STATES))["disk.used"]
    bucket = (now - 20 * MINUTE_MS) // state["step"] * state["step"]
    box = await plot_box(page, "disk.used")
    x = box["x"] + (bucket - state["xMin"]) / (state["xMax"] - state["xMin"]) * box["width"]
    await page.mouse.move(x, box["y"] + box["height"] / 2)
    readout = card.locator(".chart-readout")
    await expect(readout).to_have_attribute("data-hover", "true")
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(bucket / 1000)) + f".{bucket % 1000:03d}Z"
    assert await readout.locator("time").get_attribute("datetime") == iso
    assert (
        await readout.locator(".readout-value").inner_text()
    ).strip() == "avg 1.5 KiB (min 1.5 KiB, max 1.5 KiB) · 1 reading"
    assert await readout.locator("time").inner_text() != ""
    # Away from the chart it shows the newest bucket again.
    await page.mouse.move(1, 1)
    await expect(readout).to_have_attribute("data-hover", "false")


LONG_NAMES = [
    "host.disk.read_bytes",
    "host.disk.read_count",
    "host.network.transmit_bytes_per_second",
    "host.network.transmit_packets_per_second",
]


async def test_phone_layout_does_not_scroll_sideways_and_keeps_long_names_apart(admin, open_page):
    from playwright.async_api import expect

    now = int(time.time() * 1000)
    await admin.insert_metrics([metric(name, 123456789.5, "B", now - 1000) for name in LONG_NAMES])
    page = await open_page("admin-token", viewport=PHONE)
    await expect(page.locator("#tiles .tile")).to_have_count(4)
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})

    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    # Each name is shown whole (wrapped, never cut), with its full name as a title.
    names = await page.locator("#tiles .tile-name, #charts .chart-title, #latest .name").evaluate_all(
        r"""els => els.map((e) => ({
          text: e.innerText.replace(/\s+/g, ""),
          title: e.title,
          clipped: e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1,
          inside: e.getBoundingClientRect().right <= window.innerWidth,
        }))"""
    )
    # Tiles and charts in name order, the table newest first (the insertion order reversed).
    shown = LONG_NAMES * 2 + LONG_NAMES[::-1]
    assert names == [{"text": n, "title": n, "clipped": False, "inside": True} for n in shown]
    tiles = await page.locator("#tiles .tile-name").all_inner_texts()
    assert len(set(tiles)) == len(LONG_NAMES)


@pytest.mark.parametrize("viewport", [WALL, PHONE], ids=["1280x720", "phone"])
async def test_time_labels_fit_without_overlapping_at_5_minutes_and_7_days(admin, open_page, viewport):
    now = int(time.time() * 1000)
    await admin.insert_metrics([metric("cpu", i, "%", now - i * 90_000) for i in range(3)])
    page = await open_page("viewer-token", viewport=viewport)
    await page.wait_for_function(SHOWS_RANGE, arg={"last": HOUR_MS})

    minutes = re.compile(r"^\d{1,2}:\d{2}(:\d{2})?\s?[AP]M$")
    dates = re.compile(r"^[A-Z][a-z]{2} \d{1,2}$")
    for preset, last, label in (("5 min", 5 * MINUTE_MS, minutes), ("7 d", 7 * DAY_MS, dates)):
        await page.get_by_role("button", name=preset).click()
        await page.wait_for_function(SHOWS_RANGE, arg={"last": last})
        card = page.locator('#charts .chart-card[data-name="cpu"]')
        ticks = json.loads(await card.get_attribute("data-x-ticks"))
        width = float(await card.get_attribute("data-canvas-width"))
        texts = [t["text"] for t in ticks]
        assert len(ticks) >= 2 and all(label.match(text) for text in texts), (preset, ticks)
        assert len(set(texts)) == len(texts), (preset, ticks)
        # Inside the canvas, left to right, at least a few pixels apart.
        assert all(0 <= t["left"] < t["right"] <= width for t in ticks), (preset, width, ticks)
        assert all(a["right"] + 4 <= b["left"] for a, b in itertools.pairwise(ticks)), (preset, ticks)


CONTRAST = """() => {
  const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const parse = (s) => s.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = parse(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] === 1) return c;
    }
    return [255, 255, 255];
  };
  const worst = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el.checkVisibility() || el.closest("template, noscript")) continue;
    const [a, b] = [luminance(parse(getComputedStyle(el).color)), luminance(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) worst.push(`${node.textContent.trim().slice(0, 30)}: ${ratio.toFixed(2)}`);
  }
  return worst;
}"""


@pytest.mark.parametrize("viewport", [WALL, PHONE], ids=["1280x720", "phone"])
async def test_accessible_basics_at_wall_screen_and_phone_sizes(admin, open_page, viewport):
    from playwright.async_api import expect

    await admin.insert_metrics([metric(n, 50 + i, "ms") for i, n in enumerate(["latency_p95", "cpu", "requests"])])
    for severity in ("low", "medium", "high"):
        await admin.ok(
            "store.insert",
            bucket="alerts",
            data={"metric": "cpu", "threshold": 1, "severity": severity, "timestamp": 1},
        )
    page = await open_page("admin-token", viewport=viewport)
    await expect(page.locator("#alerts li")).to_have_count(3)
    await expect(page.locator("#charts .chart-card[data-points]")).to_have_count(3)

    # Every form control has a label (or an accessible name of its own).
    unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
      .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
      .map(e => e.outerHTML)""")
    assert unlabelled == []
    # Nothing overflows sideways, and text reads against its background.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert await page.evaluate(CONTRAST) == []
    # Buttons and fields are big enough to hit on a touch screen.
    small = await page.evaluate("""() => [...document.querySelectorAll('#admin-panel button, #admin-panel input')]
      .filter(e => e.getBoundingClientRect().height < 24).map(e => e.outerHTML)""")
    assert small == []


# --- alerts: alert-status and alert-events ------------------------------------------

# The alerts panel as shown: [{id, state, severity, text, since}] in order,
# `text` being its non-empty pieces (severity, rule, value, state, time) joined by " | ".
ALERTS_SHOWN = """() => [...document.querySelectorAll('#alerts li')].map((li) => ({
  id: li.dataset.id, state: li.dataset.state, severity: li.dataset.severity,
  text: [...li.querySelectorAll('.severity, .alert-rule, .alert-value, .alert-state, time')]
    .map((e) => e.textContent).filter(Boolean).join(' | '),
  since: li.dataset.since === undefined ? null : +li.dataset.since,
}))"""

# What a chart drew along each threshold it recorded: the share of the plot's
# width, on the line's row and 6 px above it, whose pixels have the line's
# colour (the canvas read back, in canvas pixels), and how far the line is
# from where the chart's value axis puts its threshold.
THRESHOLD_PIXELS = """([name, rgb]) => {
  const card = document.querySelector(`#charts .chart-card[data-name="${name}"]`);
  const canvas = card.querySelector('canvas');
  const over = card.querySelector('.u-over').getBoundingClientRect();
  const box = canvas.getBoundingClientRect();
  const ratio = canvas.width / box.width;
  const left = Math.ceil((over.left - box.left) * ratio) + 2;
  const right = Math.floor((over.right - box.left) * ratio) - 2;
  const image = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const share = (y) => {
    let hits = 0;
    for (let x = left; x < right; x++) {
      const i = (y * canvas.width + x) * 4;
      if ([0, 1, 2].every((c) => Math.abs(image[i + c] - rgb[c]) <= 8)) hits += 1;
    }
    return hits / (right - left);
  };
  // Where the value axis puts the threshold, in canvas pixels.
  const scale = JSON.parse(card.dataset.valueScale);
  const expected = (t) => scale.top + ((scale.max - t) / (scale.max - scale.min)) * scale.height;
  return JSON.parse(card.dataset.thresholds || '[]').map((line) => ({
    ...line, on: share(line.y), above: share(line.y - 6), offBy: Math.abs(line.y - expected(line.threshold)),
  }));
}"""

HIGH_RED = [239, 68, 68]  # the high severity's line (#ef4444)


async def test_a_firing_alert_leads_the_panel_marks_its_tile_and_chart_and_clears_when_ok(admin, open_page):
    from playwright.async_api import expect

    now = int(time.time() * 1000)
    await admin.insert_metrics([metric("cpu", 10, "%", now - 60_000), metric("disk", 5, "GB", now - 60_000)])
    cpu = await admin.ok(
        "store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 50, "severity": "high", "timestamp": 1}
    )
    disk = await admin.ok(
        "store.insert", bucket="alerts", data={"metric": "disk", "threshold": 50, "severity": "low", "timestamp": 2}
    )
    none = await admin.ok(
        "store.insert",
        bucket="alerts",
        data={"metric": "no.such.metric", "threshold": 1, "severity": "medium", "timestamp": 3},
    )
    page = await open_page("viewer-token")
    tile = page.locator('#tiles .tile[data-name="cpu"]')
    chart = page.locator('#charts .chart-card[data-name="cpu"]')

    # Nothing fires: no-data first (said as such, with no time), then the ok ones, the most severe first.
    await expect(page.locator("#alerts li")).to_have_count(3)
    await expect(chart).to_have_attribute("data-points", "1")
    shown = await page.evaluate(ALERTS_SHOWN)
    assert [(a["id"], a["state"]) for a in shown] == [(none["id"], "no-data"), (cpu["id"], "ok"), (disk["id"], "ok")]
    assert shown[0]["text"] == "medium | no.such.metric above 1 | no data" and shown[0]["since"] is None
    assert shown[1]["text"].startswith("high | cpu above 50 | now 10 | ok")
    await expect(page.locator("#alerts-summary")).to_have_text("0 firing · 1 no data · 2 ok")
    for marked in (tile, chart):
        assert await marked.get_attribute("data-alert") is None
        await expect(marked.locator(".alert-badge")).to_be_hidden()
    # The threshold is drawn while ok too: dashed (about 6 px of every 10), in the severity's colour.
    await expect(chart).to_have_attribute("data-thresholds", re.compile('"state":"ok"'))
    [line] = await page.evaluate(THRESHOLD_PIXELS, ["cpu", HIGH_RED])
    assert (line["threshold"], line["severity"], line["state"]) == (50, "high", "ok")
    assert 0.4 < line["on"] < 0.75 and line["above"] < 0.1 and line["offBy"] <= 1, line

    # A reading above the threshold: the alert fires, at the top, in red, with its start.
    before = int(time.time() * 1000)
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 72.5))
    after = int(time.time() * 1000)
    first = page.locator("#alerts li").first
    await expect(first).to_have_attribute("data-state", "firing")
    shown = await page.evaluate(ALERTS_SHOWN)
    assert [(a["id"], a["state"]) for a in shown] == [
        (cpu["id"], "firing"),
        (none["id"], "no-data"),
        (disk["id"], "ok"),
    ]
    since = shown[0]["since"]
    assert before - 1000 <= since <= after + 1000
    start = await page.evaluate(
        "(ms) => new Intl.DateTimeFormat(undefined, {hour: 'numeric', minute: '2-digit', second: '2-digit'}).format(ms)",
        since,
    )
    assert shown[0]["text"] == f"high | cpu above 50 | now 72.5 | firing since | {start}"
    assert await first.locator("time").get_attribute("datetime") == await page.evaluate(
        "(ms) => new Date(ms).toISOString()", since
    )
    assert await first.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(59, 17, 20)"
    assert await first.locator(".severity").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(220, 38, 38)"
    await expect(page.locator("#alerts-summary")).to_have_text("1 firing · 1 no data · 1 ok")
    # The tile and the chart of cpu are marked, and only they.
    for marked in (tile, chart):
        await expect(marked).to_have_attribute("data-alert", "firing")
        await expect(marked).to_have_attribute("data-severity", "high")
        await expect(marked.locator(".alert-badge")).to_have_text("high · above 50")
        await expect(marked.locator(".alert-badge")).to_be_visible()
        assert await marked.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(239, 68, 68)"
    assert await page.locator("[data-alert]").count() == 2
    # The threshold line, solid now.
    await expect(chart).to_have_attribute("data-thresholds", re.compile('"state":"firing"'))
    [line] = await page.evaluate(THRESHOLD_PIXELS, ["cpu", HIGH_RED])
    assert line["on"] > 0.9 and line["above"] < 0.1 and line["offBy"] <= 1, line
    # The change is in the recent changes, newest first.
    await expect(page.locator("#alert-events li").first).to_contain_text("cpu above 50: ok → firing (72.5)")

    # Back at or below the threshold: ok again, below no-data, and every mark gone.
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 50))
    await expect(page.locator(f'#alerts li[data-id="{cpu["id"]}"]')).to_have_attribute("data-state", "ok")
    shown = await page.evaluate(ALERTS_SHOWN)
    assert [(a["id"], a["state"]) for a in shown] == [(none["id"], "no-data"), (cpu["id"], "ok"), (disk["id"], "ok")]
    assert shown[1]["since"] >= since
    for marked in (tile, chart):
        await expect(marked).not_to_have_attribute("data-alert", "firing")
        await expect(marked.locator(".alert-badge")).to_be_hidden()
    assert await page.locator("[data-alert]").count() == 0
    await expect(chart).to_have_attribute("data-thresholds", re.compile('"state":"ok"'))
    [line] = await page.evaluate(THRESHOLD_PIXELS, ["cpu", HIGH_RED])
    assert 0.4 < line["on"] < 0.75, line
    await expect(page.locator("#alert-events li").first).to_contain_text("cpu above 50: firing → ok (50)")


async def test_an_alert_created_on_the_page_shows_its_state_at_once_on_a_phone(admin, open_page):
    from playwright.async_api import expect

    await admin.ok("store.insert", bucket="metrics", data=metric("host.network.transmit_bytes_per_second", 900, "B/s"))
    page = await open_page("admin-token", viewport=PHONE)
    await expect(page.locator("#tiles .tile")).to_have_count(1)
    for name, threshold, severity in (
        ("host.network.transmit_bytes_per_second", 100, "medium"),
        ("never.reported", 5, "high"),
    ):
        await page.get_by_label("Metric", exact=True).fill(name)
        await page.get_by_label("Threshold").fill(str(threshold))
        await page.get_by_label("Severity").select_option(severity)
        await page.get_by_role("button", name="Create alert").click()
        await expect(page.locator("#admin-status")).to_contain_text(f"Created a {severity} alert")
    alerts = page.locator("#alerts li")
    await expect(alerts).to_have_count(2)
    await expect(alerts.nth(0)).to_have_attribute("data-state", "firing")
    await expect(alerts.nth(0)).to_have_attribute("data-severity", "medium")
    await expect(alerts.nth(1)).to_have_attribute("data-state", "no-data")
    await expect(alerts.nth(1)).to_contain_text("no data")
    tile = page.locator("#tiles .tile")
    await expect(tile).to_have_attribute("data-alert", "firing")
    await expect(tile.locator(".alert-badge")).to_have_text("medium · above 100")
    await expect(page.locator('#charts .chart-card[data-alert="firing"]')).to_have_count(1)
    # Nothing scrolls sideways, the badges included.
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    outside = await page.evaluate(
        "() => [...document.querySelectorAll('.alert-badge, #alerts li')].filter((e) => e.getBoundingClientRect().right > window.innerWidth).length"
    )
    assert outside == 0
