"""Reactive queries: pushes only on change, one evaluation per distinct query,
one layer message per change, whole large results, nothing on rollback."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from metrics import derived
from metrics.models import Metric
from realtime.hub import get_hub
from realtime.layer import CHANGES_GROUP
from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)


async def test_no_push_when_result_unchanged(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    cpu = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    await admin.ok("store.insert", bucket="metrics", data=metric("memory", 1, "MB"))
    assert await viewer.nothing(timeout=0.5)
    # The subscription is still live: a cpu insert reaches it.
    record = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 2))
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": cpu["subscriptionId"],
        "data": [record],
    }


async def test_each_distinct_query_evaluated_once_and_one_layer_message(connect, monkeypatch):
    admin = await connect("admin-token")
    viewers = [await connect("viewer-token") for _ in range(50)]
    for viewer in viewers:
        await viewer.ok("store.subscribe", query="metric-count")
    hub = get_hub()
    [live] = hub.queries.live.values()
    assert len(live.subscriptions) == 50

    sent: list[tuple[str, dict]] = []
    layer = get_channel_layer()
    original = layer.group_send

    async def counting_group_send(group, message):
        sent.append((group, message))
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", counting_group_send)
    evaluations, received = live.evaluations, hub.queries.changes_received
    await admin.ok("store.insert", bucket="metrics", data=metric())
    for viewer in viewers:
        assert (await viewer.push())["data"] == 1
    assert live.evaluations - evaluations == 1
    assert hub.queries.changes_received - received == 1
    assert len(sent) == 1
    group, message = sent[0]
    assert group == CHANGES_GROUP
    # Only primitives cross the layer.
    assert json.loads(json.dumps(message)) == message
    assert message["changes"] == {"metrics": [message["changes"]["metrics"][0]]}


async def test_ten_thousand_metrics_arrive_whole(connect):
    admin = await connect("admin-token")
    await sync_to_async(_bulk_insert)(10_000)
    viewer = await connect("viewer-token")
    reply = await viewer.ok("store.subscribe", query="all-metrics")
    assert len(reply["data"]) == 10_000
    assert len(json.dumps(reply)) > 1024 * 1024  # bigger than daphne's default frame limit
    record = await admin.ok("store.insert", bucket="metrics", data=metric("disk", 5))
    pushed = await viewer.push()
    assert len(pushed["data"]) == 10_001
    assert pushed["data"][:10_000] == reply["data"]
    assert pushed["data"][-1] == record


def _bulk_insert(n: int) -> None:
    with transaction.atomic():
        for i in range(n):
            Metric.objects.create(name=f"m{i % 7}", value=i, unit="u", timestamp=1_700_000_000_000 + i)


async def test_rolled_back_transaction_writes_and_pushes_nothing(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    await viewer.ok("store.subscribe", query="metric-count")
    await viewer.ok("store.subscribe", query="all-metrics")
    reply = await admin.request(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": metric("cpu", 1)},
            {"op": "insert", "bucket": "metrics", "data": {"name": "cpu"}},
        ],
    )
    assert reply == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": 'Validation failed for bucket "metrics": value: Field is required; timestamp: Field is required',
        "details": [
            {"field": "value", "message": "Field is required", "code": "required"},
            {"field": "timestamp", "message": "Field is required", "code": "required"},
        ],
    }
    assert await viewer.nothing(timeout=0.5)
    assert await admin.ok("store.count", bucket="metrics") == 0


async def test_writes_outside_the_protocol_push(connect):
    viewer = await connect("viewer-token")
    sub = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "shell"})

    created = await sync_to_async(Metric.objects.create)(name="shell", value=3, timestamp=5)
    first = await viewer.push()
    assert first["subscriptionId"] == sub["subscriptionId"]
    assert [(r["id"], r["value"], r["unit"], r["_version"]) for r in first["data"]] == [(created.key, 3, "", 1)]

    created.value = 4
    await sync_to_async(created.save)()
    second = await viewer.push()
    assert [(r["value"], r["_version"]) for r in second["data"]] == [(4, 2)]

    await sync_to_async(created.delete)()
    assert (await viewer.push())["data"] == []


async def test_burst_of_writes_ends_with_the_final_result(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    sub = await viewer.ok("store.subscribe", query="metric-count")
    # Pipelined inserts: the hub may merge changes, never lose the last.
    for i in range(30):
        await admin.send({"id": 100 + i, "type": "store.insert", "bucket": "metrics", "data": metric(value=i)})
    for i in range(30):
        assert (await admin.reply_to(100 + i))["type"] == "result"
    seen = []
    while not seen or seen[-1] != 30:
        frame = await viewer.push()
        assert frame["subscriptionId"] == sub["subscriptionId"]
        seen.append(frame["data"])
    assert seen == sorted(set(seen)), "results went backwards or repeated"
    assert await viewer.nothing()


async def test_lost_layer_messages_are_repaired_when_the_layer_returns(connect, settings, monkeypatch):
    """A change this process never heard of (another process's, during a layer
    outage) reaches subscribers once the hub's probes come back."""
    settings.DASHBOARD = {**settings.DASHBOARD, "LAYER_PROBE_SECONDS": 0.05}
    viewer = await connect("viewer-token")
    sub = await viewer.ok("store.subscribe", query="metric-count")
    hub = get_hub()
    layer = get_channel_layer()
    original = layer.group_send
    outage = True

    async def flaky_group_send(group, message):
        if outage:
            raise ConnectionError("layer down")
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", flaky_group_send)
    async with asyncio.timeout(5):  # the next probe notices the outage
        while hub.link.healthy:  # noqa: ASYNC110  (the link reports health as a flag, not an event)
            await asyncio.sleep(0.01)
    # bulk_create sends no signals: as if another process wrote meanwhile
    # (the readings and, as its writes would, the per-name figures).
    await sync_to_async(Metric.objects.bulk_create)(
        [Metric(key=f"k{i}", name="cpu", value=i, timestamp=i, created_at=1, updated_at=1) for i in range(3)]
    )
    await sync_to_async(derived.rebuild)()
    assert await viewer.nothing(timeout=0.2)
    outage = False
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub["subscriptionId"],
        "data": 3,
    }
    assert hub.link.healthy and hub.link.resyncs == 1 and hub.link.failures >= 1


# --- routing by metric name --------------------------------------------------------------


def _live(hub, query: str, **params):
    [live] = [live for live in hub.queries.live.values() if live.query.name == query and live.params == params]
    return live


async def test_a_query_of_one_name_is_evaluated_only_for_that_name_s_readings(connect, monkeypatch):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    window = {"from": 0, "to": 100_000}
    series = await viewer.ok("store.subscribe", query="metric-series", params={"name": "cpu", "points": 10, **window})
    latest = await viewer.ok("store.subscribe", query="latest-metrics-by-name", params={"name": "cpu", "n": 2})
    by_name = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    count = await viewer.ok("store.subscribe", query="metric-count")
    hub = get_hub()
    named = [
        _live(hub, "metric-series", name="cpu", points=10, **window),
        _live(hub, "latest-metrics-by-name", name="cpu", n=2),
        _live(hub, "metrics-by-name", name="cpu"),
    ]
    assert [live.names for live in named] == [{"metrics": frozenset({"cpu"})}] * 3
    total = _live(hub, "metric-count")
    assert total.names == {}
    before = [live.evaluations for live in named]

    sent: list[dict] = []
    layer = get_channel_layer()
    original = layer.group_send

    async def recording_group_send(group, message):
        sent.append(message)
        await original(group, message)

    monkeypatch.setattr(layer, "group_send", recording_group_send)
    # Another name's readings: only the count moves, and only it is evaluated.
    await admin.ok("store.insert", bucket="metrics", data={**metric("memory", 1), "timestamp": 10})
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": count["subscriptionId"],
        "data": 1,
    }
    assert [live.evaluations for live in named] == before
    assert sent[0]["names"] == {"metrics": ["memory"]}

    # A cpu reading reaches all four.
    record = await admin.ok("store.insert", bucket="metrics", data={**metric("cpu", 7), "timestamp": 20})
    assert (await viewer.push_for(series["subscriptionId"]))["data"] == {
        "name": "cpu",
        "unit": record["unit"],
        "from": 0,
        "to": 100_000,
        "step": 20_000,
        "points": [{"t": 0, "count": 1, "min": 7.0, "max": 7.0, "avg": 7.0}],
    }
    assert (await viewer.push_for(latest["subscriptionId"]))["data"] == [record]
    assert (await viewer.push_for(by_name["subscriptionId"]))["data"] == [record]
    assert (await viewer.push_for(count["subscriptionId"]))["data"] == 2
    assert [live.evaluations for live in named] == [n + 1 for n in before]


async def test_a_reading_moved_to_another_name_reaches_both_names(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    record = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    cpu = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    disk = await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "disk"})
    assert (cpu["data"], disk["data"]) == ([record], [])
    moved = await admin.ok("store.update", bucket="metrics", key=record["id"], data={"name": "disk"})
    assert (await viewer.push_for(cpu["subscriptionId"]))["data"] == []
    assert (await viewer.push_for(disk["subscriptionId"]))["data"] == [moved]


async def test_a_change_without_names_reaches_queries_of_one_name(connect):
    # store.clear names no metric: every query of the bucket is evaluated.
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    record = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    cpu = await viewer.ok("store.subscribe", query="latest-metrics-by-name", params={"name": "cpu", "n": 5})
    assert cpu["data"] == [record]
    await admin.ok("store.clear", bucket="metrics")
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": cpu["subscriptionId"],
        "data": [],
    }
