"""The Python client (dashboard_client) against a real server process: every
operation, errors, subscriptions, heartbeat, and surviving a server restart.

System notices the server sends only in situations a test cannot cheaply
cause (shutdown, session revoked, a login refused after a reconnect) are
played by a small scripted WebSocket server at the end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import serve

from dashboard_client import (
    Backoff,
    ConnectionLost,
    DashboardError,
    SessionRevoked,
)
from tests.servers import live_server

TIMEOUT = 10.0


def metric(name: str, value: float = 1.0, unit: str = "%", timestamp: int = 1706745600000) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "timestamp": timestamp}


@pytest.fixture(scope="module")
def server(tmp_path_factory, template_database):
    """One server for the module; a short heartbeat, so every test also
    relies on the client answering pings."""
    process = live_server(tmp_path_factory.mktemp("client"), template_database, DASHBOARD_HEARTBEAT_SECONDS="0.5")
    yield process
    process.stop()


@pytest.fixture
def own_server(tmp_path, template_database):
    """A server of the test's own, which it may kill and restart."""
    process = live_server(tmp_path, template_database)
    yield process
    if process.running:
        process.kill()  # nothing to keep: a clean shutdown would only cost time


async def eventually(condition, timeout: float = TIMEOUT) -> None:
    """Polls `condition()` until it holds, for at most `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  (the client offers no event for these states)
            await asyncio.sleep(0.02)


# --- operations ----------------------------------------------------------------------


async def test_connect_waits_for_welcome_and_logs_in(server, open_dashboard_client):
    c = await open_dashboard_client(server.url)
    assert set(c.welcome) == {"type", "version", "serverTime", "requiresAuth"}
    assert (c.welcome["type"], c.welcome["version"], c.welcome["requiresAuth"]) == ("welcome", "1.0.0", True)
    assert c.session == {"userId": "admin-1", "roles": ["admin"], "expiresAt": None}
    assert await c.whoami() == {"authenticated": True, "userId": "admin-1", "roles": ["admin"], "expiresAt": None}
    assert await c.logout() == {"loggedOut": True}
    assert await c.whoami() == {"authenticated": False}
    with pytest.raises(DashboardError) as raised:
        await c.count("metrics")
    assert (raised.value.code, raised.value.message) == ("UNAUTHORIZED", "Authentication required")
    assert await c.login("viewer-token") == {"userId": "viewer-1", "roles": ["viewer"], "expiresAt": None}
    assert c.token == "viewer-token"


async def test_every_store_operation(server, open_dashboard_client):
    c = await open_dashboard_client(server.url)
    assert await c.clear("metrics") == {"cleared": True}
    a = await c.insert("metrics", metric("cpu", 10, timestamp=1))
    b = await c.insert("metrics", metric("cpu", 30, timestamp=2))
    m = await c.insert("metrics", metric("mem", 500, "MB", timestamp=3))
    assert set(a) == {"id", "name", "value", "unit", "timestamp", "_version", "_createdAt", "_updatedAt"}
    assert (a["name"], a["value"], a["unit"], a["timestamp"], a["_version"]) == ("cpu", 10, "%", 1, 1)

    assert await c.get("metrics", a["id"]) == a
    assert await c.get("metrics", "no-such-key") is None
    a2 = await c.update("metrics", a["id"], {"value": 20})
    assert (a2["id"], a2["value"], a2["_version"]) == (a["id"], 20, 2)

    assert await c.all("metrics") == [a2, b, m]
    assert await c.where("metrics", {"name": "cpu"}) == [a2, b]
    assert await c.where("metrics", {"value": {"$gt": 25}}) == [b, m]
    assert await c.find_one("metrics", {"name": "mem"}) == m
    assert await c.find_one("metrics", {"name": "disk"}) is None
    assert await c.count("metrics") == 3
    assert await c.count("metrics", {"name": "cpu"}) == 2
    assert await c.first("metrics", 2) == [a2, b]
    assert await c.last("metrics", 2) == [b, m]
    assert await c.paginate("metrics", 2) == {"records": [a2, b], "hasMore": True, "nextCursor": b["id"]}
    assert await c.paginate("metrics", 2, after=b["id"]) == {"records": [m], "hasMore": False, "nextCursor": m["id"]}
    assert await c.sum("metrics", "value", {"name": "cpu"}) == 50
    assert await c.avg("metrics", "value", {"name": "cpu"}) == 25
    assert await c.min("metrics", "value") == 20
    assert await c.max("metrics", "value") == 500
    assert await c.min("metrics", "value", {"name": "disk"}) is None
    assert await c.buckets() == {"count": 2, "names": ["metrics", "alerts"]}
    stats = await c.stats()
    assert stats["records"]["perBucket"]["metrics"] == 3

    results = await c.transaction(
        [
            {"op": "insert", "bucket": "metrics", "data": metric("net", 7, "B/s", timestamp=4)},
            {"op": "update", "bucket": "metrics", "key": b["id"], "data": {"value": 31}},
            {"op": "count", "bucket": "metrics", "filter": {"name": "net"}},
            {"op": "get", "bucket": "metrics", "key": m["id"]},
        ]
    )
    assert len(results) == 4
    assert (results[0]["name"], results[1]["value"], results[2], results[3]) == ("net", 31, 1, m)

    with pytest.raises(DashboardError) as raised:
        await c.transaction(
            [
                {"op": "insert", "bucket": "metrics", "data": metric("never")},
                {"op": "update", "bucket": "metrics", "key": "missing", "data": {"value": 1}},
            ]
        )
    assert (raised.value.code, raised.value.message) == (
        "NOT_FOUND",
        'Record with key "missing" not found in bucket "metrics"',
    )
    assert await c.count("metrics", {"name": "never"}) == 0

    assert await c.delete("metrics", b["id"]) == {"deleted": True}
    assert await c.get("metrics", b["id"]) is None
    assert await c.clear("metrics") == {"cleared": True}
    assert await c.count("metrics") == 0


async def test_errors_raise_one_type_with_code_message_and_details(server, open_dashboard_client):
    viewer = await open_dashboard_client(server.url, "viewer-token")
    with pytest.raises(DashboardError) as raised:
        await viewer.insert("metrics", metric("cpu"))
    assert (raised.value.code, raised.value.message) == ("FORBIDDEN", "No permission for store.insert on metrics")

    admin = await open_dashboard_client(server.url)
    with pytest.raises(DashboardError) as raised:
        await admin.insert("metrics", {"name": "cpu", "value": "high", "timestamp": 1})
    assert raised.value.code == "VALIDATION_ERROR"
    assert raised.value.message == 'Validation failed for bucket "metrics": value: Expected type "number", got string'
    assert raised.value.details == [{"field": "value", "message": 'Expected type "number", got string', "code": "type"}]

    with pytest.raises(DashboardError) as raised:
        await admin.insert("metrics", {"name": "cpu", "value": float("nan"), "timestamp": 1})
    assert raised.value.code == "VALIDATION_ERROR"  # refused before sending: NaN is not JSON

    with pytest.raises(DashboardError) as raised:
        await admin.subscribe("no-such-query")
    assert (raised.value.code, raised.value.message) == ("QUERY_NOT_DEFINED", 'Query "no-such-query" is not defined')
    with pytest.raises(DashboardError) as raised:
        await admin.request("store.explode", bucket="metrics")
    assert (raised.value.code, raised.value.message) == ("UNKNOWN_OPERATION", 'Unknown store operation "store.explode"')
    # The connection stays usable after errors.
    assert (await admin.whoami())["authenticated"] is True

    with pytest.raises(DashboardError) as raised:
        await open_dashboard_client(server.url, "not-a-token")
    assert (raised.value.code, raised.value.message) == ("UNAUTHORIZED", "Invalid token")


async def test_unreachable_server_raises_connection_lost(open_dashboard_client):
    from tests.servers import free_port

    with pytest.raises(ConnectionLost):
        await open_dashboard_client(f"ws://127.0.0.1:{free_port()}/ws/")


# --- subscriptions ---------------------------------------------------------------------


async def test_subscription_calls_back_with_initial_data_and_each_push(server, open_dashboard_client):
    writer = await open_dashboard_client(server.url)
    viewer = await open_dashboard_client(server.url, "viewer-token")
    got: list[Any] = []
    sub = await viewer.subscribe("metrics-by-name", {"name": "sub-test"}, got.append)
    assert got == [[]] and sub.initial and sub.id.startswith("sub-") and sub.active

    first = await writer.insert("metrics", metric("sub-test", 1))
    await sub.wait_for(lambda data: len(data) == 1, TIMEOUT)
    second = await writer.insert("metrics", metric("sub-test", 2))
    await sub.wait_for(lambda data: len(data) == 2, TIMEOUT)
    assert got == [[], [first], [first, second]]
    assert not sub.initial and sub.data == [first, second]

    # A coroutine callback is awaited, in order.
    counts: list[int] = []

    async def record(count: int) -> None:
        await asyncio.sleep(0)
        counts.append(count)

    counter = await viewer.subscribe("metric-count", None, record)
    base = counter.data
    await viewer.unsubscribe(sub)
    assert not sub.active and viewer.subscriptions == [counter]
    await writer.insert("metrics", metric("sub-test", 3))
    await counter.wait_for(lambda n: n == base + 1, TIMEOUT)
    await eventually(lambda: counts == [base, base + 1])
    # The unsubscribed callback heard nothing of the third insert.
    assert got == [[], [first], [first, second]]
    with pytest.raises(DashboardError) as raised:
        await sub.wait_for(lambda data: len(data) == 3, TIMEOUT)
    assert raised.value.code == "ENDED"


async def test_server_pings_are_answered(server, open_dashboard_client):
    c = await open_dashboard_client(server.url)
    # The server pings every 0.5 s and closes with 4001 when a ping goes
    # unanswered by the next one: four pings on one connection mean pongs.
    await eventually(lambda: c.pings_answered >= 4)
    assert c.connections == 1 and c.connected
    assert (await c.whoami())["authenticated"] is True


# --- reconnecting ------------------------------------------------------------------------


async def test_subscription_survives_server_restart(own_server, open_dashboard_client):
    c = await open_dashboard_client(own_server.url)
    other = await c.subscribe("metric-count")
    got: list[Any] = []
    sub = await c.subscribe("metrics-by-name", {"name": "cpu"}, got.append)
    old_id = sub.id
    await c.unsubscribe(other)  # unsubscribed: not made again after the restart
    first = await c.insert("metrics", metric("cpu", 1))
    await sub.wait_for(lambda data: len(data) == 1, TIMEOUT)

    own_server.kill()
    await eventually(lambda: not c.connected)
    own_server.start()
    await eventually(lambda: sub.resubscriptions == 1 and c.connected)

    assert c.connections == 2
    assert sub.id != old_id and sub.active and c.subscriptions == [sub]
    # The first callback after resubscribing carries the fresh initial result.
    assert got == [[], [first], [first]]
    second = await c.insert("metrics", metric("cpu", 2))
    await sub.wait_for(lambda data: len(data) == 2, TIMEOUT)
    assert got == [[], [first], [first], [first, second]]
    assert sub.data == await c.where("metrics", {"name": "cpu"}) == [first, second]
    assert (await c.stats())["queries"]["activeSubscriptions"] == 1


async def test_write_in_flight_during_a_drop_raises_and_read_is_sent_again(own_server, open_dashboard_client):
    c = await open_dashboard_client(own_server.url)
    before = await c.count("metrics")
    # Paused, the server reads nothing: both requests stay in flight.
    own_server.pause()
    write = asyncio.create_task(c.insert("metrics", metric("in-flight")))
    read = asyncio.create_task(c.count("metrics"))
    await eventually(lambda: c.in_flight == 2)
    own_server.kill()

    with pytest.raises(ConnectionLost) as raised:
        await asyncio.wait_for(write, TIMEOUT)
    assert raised.value.code == "CONNECTION_LOST" and isinstance(raised.value, DashboardError)
    assert not read.done()

    own_server.start()
    assert await asyncio.wait_for(read, TIMEOUT) == before
    # The lost write was never applied, and nothing sent it again.
    assert await c.count("metrics", {"name": "in-flight"}) == 0
    assert c.connections == 2


async def test_writes_while_disconnected_wait_for_the_reconnect(own_server, open_dashboard_client):
    c = await open_dashboard_client(own_server.url)
    own_server.kill()
    await eventually(lambda: not c.connected)
    write = asyncio.create_task(c.insert("metrics", metric("queued")))
    own_server.start()
    record = await asyncio.wait_for(write, TIMEOUT)
    assert await c.get("metrics", record["id"]) == record


async def test_no_reconnect_when_disabled(own_server, open_dashboard_client):
    c = await open_dashboard_client(own_server.url, reconnect=False)
    own_server.kill()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(c.wait_closed(), TIMEOUT)
    with pytest.raises(ConnectionLost):
        await c.count("metrics")


def test_backoff_grows_with_jitter_up_to_its_cap():
    backoff = Backoff(initial=1, factor=2, maximum=5, jitter=0.5)
    delays = [backoff.next() for _ in range(6)]
    for delay, full in zip(delays, [1, 2, 4, 5, 5, 5], strict=False):
        assert full * 0.5 <= delay <= full
    backoff.reset()
    assert backoff.next() <= 1


# --- system notices, from a scripted server ------------------------------------------------

WELCOME = {"type": "welcome", "version": "1.0.0", "serverTime": 1, "requiresAuth": True}


class ScriptedServer:
    """Answers login and subscribe like the real server; `script(n, ws, frame)`
    decides everything else (n: the connection's number, from 1)."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = 0
        self.received: list[tuple[int, dict]] = []

    async def handler(self, ws) -> None:
        self.connections += 1
        n = self.connections
        await ws.send(json.dumps(WELCOME))
        async for text in ws:
            frame = json.loads(text)
            self.received.append((n, frame))
            if frame.get("type") == "pong":
                continue
            if await self.script(n, ws, frame):
                continue
            if frame["type"] == "auth.login":
                data = {"userId": "u", "roles": ["admin"], "expiresAt": None}
            elif frame["type"] == "store.subscribe":
                data = {"subscriptionId": f"sub-{n}", "data": n * 10}
            else:
                data = None
            await ws.send(json.dumps({"id": frame["id"], "type": "result", "data": data}))


@pytest.fixture
async def scripted():
    servers = []

    async def start(script) -> tuple[ScriptedServer, str]:
        fake = ScriptedServer(script)
        server = await serve(fake.handler, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return fake, f"ws://127.0.0.1:{port}/"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_session_revoked_stops_the_client(scripted, open_dashboard_client):
    async def script(n, ws, frame):
        if frame["type"] == "store.count":
            await ws.send(json.dumps({"type": "system", "event": "session_revoked", "reason": "token revoked"}))
            await ws.close(4002, "session_revoked")
            return True
        return False

    fake, url = await scripted(script)
    c = await open_dashboard_client(url)
    sub = await c.subscribe("metric-count")
    with pytest.raises(SessionRevoked) as raised:
        await c.count("metrics")
    assert (raised.value.code, raised.value.message) == ("SESSION_REVOKED", "token revoked")
    with pytest.raises(SessionRevoked):
        await asyncio.wait_for(c.wait_closed(), TIMEOUT)
    with pytest.raises(SessionRevoked):
        await c.insert("metrics", metric("cpu"))
    assert fake.connections == 1 and not sub.active and isinstance(sub.error, SessionRevoked)


async def test_ping_is_answered_with_its_timestamp(scripted, open_dashboard_client):
    async def script(n, ws, frame):
        if frame["type"] == "auth.whoami":
            await ws.send(json.dumps({"type": "ping", "timestamp": 1234.5}))
        return False

    fake, url = await scripted(script)
    c = await open_dashboard_client(url)
    await c.whoami()
    await eventually(lambda: (1, {"type": "pong", "timestamp": 1234.5}) in fake.received)
    assert c.pings_answered == 1


async def test_shutdown_notice_then_reconnect_and_resubscribe(scripted, open_dashboard_client):
    async def script(n, ws, frame):
        if n == 1 and frame["type"] == "auth.whoami":
            await ws.send(json.dumps({"type": "system", "event": "shutdown", "gracePeriodMs": 100}))
            await ws.close(1000, "server_shutdown")
            return True
        if n == 2 and frame["type"] == "store.subscribe":
            await ws.send(
                json.dumps({"id": frame["id"], "type": "result", "data": {"subscriptionId": "sub-9", "data": 20}})
            )
            await ws.send(
                json.dumps({"type": "push", "channel": "subscription", "subscriptionId": "sub-9", "data": 21})
            )
            return True
        return False

    fake, url = await scripted(script)
    c = await open_dashboard_client(url)
    got: list[Any] = []
    sub = await c.subscribe("metric-count", None, got.append)
    # whoami is a read: in flight during the shutdown, it is sent again.
    assert await c.whoami() is None
    await sub.wait_for(lambda n: n == 21, TIMEOUT)
    assert got == [10, 20, 21] and sub.id == "sub-9" and fake.connections == 2
    assert [f["type"] for n, f in fake.received if n == 2] == ["auth.login", "store.subscribe", "auth.whoami"]


async def test_login_refused_after_reconnect_stops_the_client(scripted, open_dashboard_client):
    async def script(n, ws, frame):
        if n == 1 and frame["type"] == "store.count":
            await ws.close(1011, "crash")
            return True
        if n == 2 and frame["type"] == "auth.login":
            await ws.send(
                json.dumps({"id": frame["id"], "type": "error", "code": "UNAUTHORIZED", "message": "Token has expired"})
            )
            return True
        return False

    fake, url = await scripted(script)
    c = await open_dashboard_client(url)
    sub = await c.subscribe("metric-count")
    with pytest.raises(DashboardError) as raised:
        await c.count("metrics")
    assert (raised.value.code, raised.value.message) == ("UNAUTHORIZED", "Token has expired")
    with pytest.raises(DashboardError):
        await asyncio.wait_for(c.wait_closed(), TIMEOUT)
    assert fake.connections == 2 and not sub.active
