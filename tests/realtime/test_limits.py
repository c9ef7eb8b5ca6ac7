"""Configurable limits: each answered with an error frame (or the protocol's
close code) while the server keeps serving."""

from __future__ import annotations

import asyncio

import pytest

from realtime.outbox import Outbox
from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)


async def test_subscriptions_in_total(limits, connect):
    limits(MAX_SUBSCRIPTIONS_TOTAL=3)
    first = await connect("viewer-token")
    second = await connect("viewer-token")
    subs = [await first.ok("store.subscribe", query="metric-count") for _ in range(2)]
    await second.ok("store.subscribe", query="all-metrics")
    assert await second.request("store.subscribe", query="metric-count") == {
        "id": 3,
        "type": "error",
        "code": "RATE_LIMITED",
        "message": "Subscription limit reached (max 3 in total)",
    }
    await first.ok("store.unsubscribe", subscriptionId=subs[0]["subscriptionId"])
    assert (await second.ok("store.subscribe", query="metric-count"))["data"] == 0


async def test_requests_per_user_are_rate_limited(limits, connect):
    limits(REQUEST_RATE=2, REQUEST_RATE_WINDOW_SECONDS=0.5)
    client = await connect("viewer-token")  # login is not counted
    await client.ok("store.count", bucket="metrics")
    await client.ok("store.count", bucket="metrics")
    reply = await client.request("store.count", bucket="metrics")
    retry = reply.get("details", {}).get("retryAfterMs")
    assert isinstance(retry, int) and 1 <= retry <= 250
    assert reply == {
        "id": 4,
        "type": "error",
        "code": "RATE_LIMITED",
        "message": f"Rate limit exceeded. Retry after {retry}ms",
        "details": {"retryAfterMs": retry},
    }
    await asyncio.sleep(retry / 1000)  # the limit is about time passing
    assert await client.ok("store.count", bucket="metrics") == 0


async def test_request_rate_is_off_by_default(connect):
    client = await connect("admin-token")
    operations = [{"op": "count", "bucket": "metrics"}]
    for request_id in range(100, 400):  # far past any small default
        await client.send({"id": request_id, "type": "store.transaction", "operations": operations})
    for request_id in range(100, 400):
        assert (await client.reply_to(request_id))["type"] == "result"


async def test_rate_limit_is_per_user(limits, connect):
    limits(REQUEST_RATE=1, REQUEST_RATE_WINDOW_SECONDS=60)
    viewer = await connect("viewer-token")
    admin = await connect("admin-token")
    await viewer.ok("store.count", bucket="metrics")
    assert (await viewer.request("store.count", bucket="metrics"))["code"] == "RATE_LIMITED"
    assert await admin.ok("store.count", bucket="metrics") == 0


async def test_params_size(limits, connect):
    limits(MAX_PARAMS_BYTES=20)
    client = await connect("viewer-token")
    assert await client.request("store.subscribe", query="metrics-by-name", params={"name": "x" * 30}) == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": 'Invalid "params": at most 20 bytes',
    }
    assert (await client.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"}))["data"] == []


@pytest.mark.parametrize(
    "request_fields, field",
    [
        ({"type": "store.last", "bucket": "metrics", "n": 11}, "n"),
        ({"type": "store.first", "bucket": "metrics", "n": 11}, "n"),
        ({"type": "store.paginate", "bucket": "metrics", "limit": 11}, "limit"),
        ({"type": "store.subscribe", "query": "latest-metrics", "params": {"n": 11}}, "n"),
    ],
)
async def test_largest_n_and_limit(limits, connect, request_fields, field):
    limits(MAX_RESULT_LIMIT=10)
    client = await connect("viewer-token")
    kind = request_fields.pop("type")
    assert await client.request(kind, **request_fields) == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": f'Invalid "{field}": at most 10',
    }
    assert await client.ok("store.last", bucket="metrics", n=10) == []


async def test_operations_per_transaction(limits, connect):
    limits(MAX_TRANSACTION_OPERATIONS=2)
    admin = await connect("admin-token")
    operations = [{"op": "insert", "bucket": "metrics", "data": metric(value=i)} for i in range(3)]
    assert await admin.request("store.transaction", operations=operations) == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": '"operations" may contain at most 2 operations',
    }
    assert await admin.ok("store.count", bucket="metrics") == 0
    assert len((await admin.ok("store.transaction", operations=operations[:2]))["results"]) == 2


async def test_connections_per_address(limits, connect):
    limits(MAX_CONNECTIONS_PER_ADDRESS=2)
    first = await connect("viewer-token")
    await connect("viewer-token")
    from channels.testing import WebsocketCommunicator

    from dashboard_project.asgi import application

    third = WebsocketCommunicator(application, "/ws/")
    connected, _ = await third.connect()
    assert connected  # accepted, so that the close code reaches the client
    assert await third.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4003,
        "reason": "too_many_connections",
    }
    await third.disconnect()
    await first.communicator.disconnect()
    fourth = WebsocketCommunicator(application, "/ws/")
    assert (await fourth.connect())[0]
    assert (await fourth.receive_json_from())["type"] == "welcome"
    await fourth.disconnect()


async def test_outbox_coalesces_pushes_and_bounds_what_waits():
    """A client that does not read: replies queue in order, pushes keep only
    the newest result per subscription, and past the byte bound the outbox
    calls for the connection to be closed."""
    sent: list[str] = []
    reader = asyncio.Event()
    overflowed: list[int] = []

    async def slow_send(message):
        await reader.wait()
        sent.append(message["text"])

    outbox = Outbox(slow_send, max_bytes=100, on_overflow=lambda: overflowed.append(outbox.queued))

    def push(key: str, body: str) -> None:
        outbox.push(key, f"<{key}>", (body,), (body.encode(),))

    outbox.reply("first")  # its send suspends: everything else queues
    push("s1", "a" * 10)
    outbox.reply("second")
    push("s1", "b" * 20)  # replaces the queued push, keeps its place
    push("s2", "c" * 5)
    assert outbox.queued == len("second") + len("<s1>") + 20 + len("<s2>") + 5
    assert overflowed == []
    reader.set()
    assert await outbox.flushed(timeout=1)
    assert sent == ["first", "<s1>" + "b" * 20, "second", "<s2>" + "c" * 5]
    assert outbox.queued == 0

    reader.clear()
    outbox.reply("x")  # goes out at once and suspends: the rest queues
    for i in range(20):
        push(f"s{i:02}", "y" * 5)
    assert overflowed == [110]  # once, at the first push past 100
    outbox.close()
