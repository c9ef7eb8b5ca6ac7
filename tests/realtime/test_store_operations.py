"""The happy path of every store operation of docs/protocol.md, through the real
ASGI application, asserting whole results."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import CLOCK_START, metric

pytestmark = pytest.mark.django_db(transaction=True)

T0 = CLOCK_START  # the `clock` fixture's start (tests/conftest.py)


def stored(key: str, data: dict, version: int = 1, created: int = T0, updated: int | None = None) -> dict:
    return {
        "id": key,
        **data,
        "_version": version,
        "_createdAt": created,
        "_updatedAt": created if updated is None else updated,
    }


@pytest.fixture
async def admin(connect):
    return await connect("admin-token")


async def insert_all(admin, *rows: dict, bucket: str = "metrics") -> list[dict]:
    return [await admin.ok("store.insert", bucket=bucket, data=row) for row in rows]


# --- insert ------------------------------------------------------------------


async def test_insert_generates_a_uuid_key_and_applies_defaults(admin):
    before = int(time.time() * 1000)
    reply = await admin.request(
        "store.insert", bucket="metrics", data={"name": "memory", "value": 4200, "timestamp": 1706745660000}
    )
    after = int(time.time() * 1000)
    record = reply["data"]
    assert str(uuid.UUID(record["id"])) == record["id"]
    created = record["_createdAt"]
    assert type(created) is int and before <= created <= after
    assert reply == {
        "id": 2,
        "type": "result",
        "data": {
            "id": record["id"],
            "name": "memory",
            "value": 4200,
            "unit": "",
            "timestamp": 1706745660000,
            "_version": 1,
            "_createdAt": created,
            "_updatedAt": created,
        },
    }
    # JSON integers stay integers; the timestamps are integral ms.
    assert type(record["value"]) is int
    assert type(record["timestamp"]) is int
    assert type(record["_updatedAt"]) is int
    assert await admin.ok("store.get", bucket="metrics", key=record["id"]) == record


async def test_insert_keeps_fractions_and_client_given_ids(admin, clock):
    record = await admin.ok("store.insert", bucket="metrics", data={"id": "cpu-1", **metric("cpu", 72.5)})
    assert record == stored("cpu-1", metric("cpu", 72.5))
    assert type(record["value"]) is float
    second = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 4200.0))
    assert second == stored(second["id"], metric("cpu", 4200))
    assert type(second["value"]) is int
    assert await admin.ok("store.get", bucket="metrics", key="cpu-1") == record
    assert await admin.ok("store.all", bucket="metrics") == [record, second]


async def test_insert_alert_defaults_severity_to_low(admin, clock):
    low = await admin.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 90, "timestamp": 5})
    high = await admin.ok(
        "store.insert",
        bucket="alerts",
        data={"id": "a-2", "metric": "disk", "threshold": 0.75, "severity": "high", "timestamp": 6},
    )
    assert str(uuid.UUID(low["id"])) == low["id"]
    assert low == stored(low["id"], {"metric": "cpu", "threshold": 90, "severity": "low", "timestamp": 5})
    assert high == stored("a-2", {"metric": "disk", "threshold": 0.75, "severity": "high", "timestamp": 6})
    assert type(low["threshold"]) is int
    assert await admin.ok("store.all", bucket="alerts") == [low, high]
    assert await admin.ok("store.all", bucket="metrics") == []


# --- get, update, delete, clear --------------------------------------------------


async def test_get(admin, clock):
    record = await admin.ok("store.insert", bucket="metrics", data={"id": "5", **metric()})
    assert await admin.request("store.get", bucket="metrics", key="5") == {
        "id": 3,
        "type": "result",
        "data": record,
    }
    assert await admin.request("store.get", bucket="metrics", key="missing") == {
        "id": 4,
        "type": "result",
        "data": None,
    }
    # Keys are strings: a number never names the record "5".
    assert await admin.request("store.get", bucket="metrics", key=5) == {"id": 5, "type": "result", "data": None}
    assert await admin.ok("store.get", bucket="metrics", key=["5"]) is None
    assert await admin.ok("store.get", bucket="metrics", key={"id": "5"}) is None
    assert await admin.ok("store.get", bucket="metrics", key=True) is None
    # Another bucket does not hold it.
    assert await admin.ok("store.get", bucket="alerts", key="5") is None


async def test_update_merges_and_bumps_version(admin, clock):
    record = await admin.ok("store.insert", bucket="metrics", data={"id": "m", **metric("cpu", 72.5, "%", 100)})
    clock.now = T0 + 250
    updated = await admin.request("store.update", bucket="metrics", key="m", data={"value": 80})
    expected = stored("m", metric("cpu", 80, "%", 100), version=2, updated=T0 + 250)
    assert updated == {"id": 3, "type": "result", "data": expected}
    assert type(updated["data"]["value"]) is int
    assert await admin.ok("store.get", bucket="metrics", key="m") == expected

    # The record sent back as data: its id, _version and times are ignored.
    clock.now = T0 + 900
    echoed = {**expected, "unit": "percent", "_version": 1, "_createdAt": 1, "_updatedAt": 2}
    again = await admin.ok("store.update", bucket="metrics", key="m", data=echoed)
    expected = stored("m", metric("cpu", 80, "percent", 100), version=3, updated=T0 + 900)
    assert again == expected
    assert await admin.ok("store.update", bucket="metrics", key="m", data={"id": "m", "_version": 7}) == stored(
        "m", metric("cpu", 80, "percent", 100), version=4, updated=T0 + 900
    )
    assert await admin.ok("store.all", bucket="metrics") == [
        stored("m", metric("cpu", 80, "percent", 100), version=4, updated=T0 + 900)
    ]
    assert record["_version"] == 1


async def test_update_alert_severity(admin, clock):
    await admin.ok("store.insert", bucket="alerts", data={"id": "a", "metric": "cpu", "threshold": 90, "timestamp": 1})
    clock.now = T0 + 1
    assert await admin.ok("store.update", bucket="alerts", key="a", data={"severity": "medium"}) == stored(
        "a", {"metric": "cpu", "threshold": 90, "severity": "medium", "timestamp": 1}, version=2, updated=T0 + 1
    )


async def test_delete(admin, clock):
    _first, second = await insert_all(admin, {"id": "a", **metric("cpu")}, {"id": "b", **metric("disk")})
    assert await admin.request("store.delete", bucket="metrics", key="a") == {
        "id": 4,
        "type": "result",
        "data": {"deleted": True},
    }
    assert await admin.ok("store.get", bucket="metrics", key="a") is None
    assert await admin.ok("store.all", bucket="metrics") == [second]
    # Deleting what is not there succeeds too.
    assert await admin.request("store.delete", bucket="metrics", key="a") == {
        "id": 7,
        "type": "result",
        "data": {"deleted": True},
    }
    assert await admin.ok("store.delete", bucket="metrics", key="never") == {"deleted": True}
    assert await admin.ok("store.delete", bucket="metrics", key=5) == {"deleted": True}
    assert await admin.ok("store.all", bucket="metrics") == [second]


async def test_clear(admin, clock):
    await insert_all(admin, metric("cpu"), metric("disk"))
    alert = await admin.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 1, "timestamp": 1})
    assert await admin.request("store.clear", bucket="metrics") == {
        "id": 5,
        "type": "result",
        "data": {"cleared": True},
    }
    assert await admin.ok("store.all", bucket="metrics") == []
    assert await admin.ok("store.count", bucket="metrics") == 0
    assert await admin.ok("store.all", bucket="alerts") == [alert]
    # Clearing an empty bucket is fine, and the bucket stays usable.
    assert await admin.ok("store.clear", bucket="metrics") == {"cleared": True}
    record = await admin.ok("store.insert", bucket="metrics", data=metric("net"))
    assert await admin.ok("store.all", bucket="metrics") == [record]


# --- reads -----------------------------------------------------------------------


async def test_all_keeps_insertion_order_after_updates(admin, clock):
    a, b, c = await insert_all(
        admin, {"id": "z", **metric("a")}, {"id": "y", **metric("b")}, {"id": "x", **metric("c")}
    )
    assert await admin.request("store.all", bucket="metrics") == {"id": 5, "type": "result", "data": [a, b, c]}
    clock.now = T0 + 5
    a2 = await admin.ok("store.update", bucket="metrics", key="z", data={"value": 1})
    c2 = await admin.ok("store.update", bucket="metrics", key="x", data={"value": 2})
    assert await admin.ok("store.all", bucket="metrics") == [a2, b, c2]
    assert await admin.ok("store.all", bucket="alerts") == []


async def test_where_find_one_and_count(admin, clock):
    cpu1, memory, cpu2, disk = await insert_all(
        admin, metric("cpu", 72.5), metric("memory", 4200, "MB"), metric("cpu", 95.2), metric("disk", 10, "GB")
    )
    assert await admin.request("store.where", bucket="metrics", filter={"name": "cpu"}) == {
        "id": 6,
        "type": "result",
        "data": [cpu1, cpu2],
    }
    assert await admin.ok("store.where", bucket="metrics", filter={"value": {"$gt": 80}}) == [memory, cpu2]
    assert await admin.ok("store.where", bucket="metrics", filter={"name": "net"}) == []
    assert await admin.ok("store.where", bucket="metrics", filter={}) == [cpu1, memory, cpu2, disk]

    assert await admin.request("store.findOne", bucket="metrics", filter={"name": "cpu"}) == {
        "id": 10,
        "type": "result",
        "data": cpu1,
    }
    assert await admin.ok("store.findOne", bucket="metrics", filter={"value": {"$gt": 80}}) == memory
    assert await admin.ok("store.findOne", bucket="metrics", filter={"unit": "GB"}) == disk
    assert await admin.request("store.findOne", bucket="metrics", filter={"name": "net"}) == {
        "id": 13,
        "type": "result",
        "data": None,
    }

    assert await admin.request("store.count", bucket="metrics") == {"id": 14, "type": "result", "data": 4}
    assert await admin.ok("store.count", bucket="metrics", filter={"name": "cpu"}) == 2
    assert await admin.ok("store.count", bucket="metrics", filter={"name": "net"}) == 0
    assert await admin.ok("store.count", bucket="alerts") == 0


async def test_first_and_last(admin, clock):
    a, b, c = await insert_all(admin, metric("a"), metric("b"), metric("c"))
    assert await admin.request("store.first", bucket="metrics", n=2) == {"id": 5, "type": "result", "data": [a, b]}
    assert await admin.ok("store.first", bucket="metrics", n=1) == [a]
    assert await admin.ok("store.first", bucket="metrics", n=3) == [a, b, c]
    assert await admin.ok("store.first", bucket="metrics", n=50) == [a, b, c]
    # The newest n, oldest first.
    assert await admin.request("store.last", bucket="metrics", n=2) == {"id": 9, "type": "result", "data": [b, c]}
    assert await admin.ok("store.last", bucket="metrics", n=1) == [c]
    assert await admin.ok("store.last", bucket="metrics", n=50) == [a, b, c]
    assert await admin.ok("store.first", bucket="alerts", n=3) == []
    assert await admin.ok("store.last", bucket="alerts", n=3) == []


async def test_paginate_walks_every_page(admin, clock):
    records = await insert_all(admin, *(metric(f"m{i}", i) for i in range(5)))
    keys = [r["id"] for r in records]
    page = await admin.request("store.paginate", bucket="metrics", limit=2)
    assert page == {
        "id": 7,
        "type": "result",
        "data": {"records": records[0:2], "hasMore": True, "nextCursor": keys[1]},
    }
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after=keys[1]) == {
        "records": records[2:4],
        "hasMore": True,
        "nextCursor": keys[3],
    }
    # The last page still names its last record.
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after=keys[3]) == {
        "records": records[4:5],
        "hasMore": False,
        "nextCursor": keys[4],
    }
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after=keys[4]) == {
        "records": [],
        "hasMore": False,
    }
    # A page that ends exactly at the end has no more after it.
    assert await admin.ok("store.paginate", bucket="metrics", limit=3, after=keys[1]) == {
        "records": records[2:5],
        "hasMore": False,
        "nextCursor": keys[4],
    }
    assert await admin.ok("store.paginate", bucket="metrics", limit=10) == {
        "records": records,
        "hasMore": False,
        "nextCursor": keys[4],
    }
    # After an unknown key: an empty page.
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after="no-such-key") == {
        "records": [],
        "hasMore": False,
    }
    # "after" a key deleted meanwhile is unknown too.
    await admin.ok("store.delete", bucket="metrics", key=keys[2])
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after=keys[2]) == {
        "records": [],
        "hasMore": False,
    }
    assert await admin.ok("store.paginate", bucket="metrics", limit=2, after=keys[1]) == {
        "records": records[3:5],
        "hasMore": False,
        "nextCursor": keys[4],
    }


async def test_paginate_empty_bucket(admin):
    assert await admin.request("store.paginate", bucket="alerts", limit=2) == {
        "id": 2,
        "type": "result",
        "data": {"records": [], "hasMore": False},
    }


async def test_paginate_walk_collects_every_record_once(admin, clock):
    records = await insert_all(admin, *(metric(f"m{i}", i) for i in range(7)))
    seen, after, pages = [], None, 0
    while True:
        fields = {"after": after} if after is not None else {}
        page = await admin.ok("store.paginate", bucket="metrics", limit=2, **fields)
        pages += 1
        seen += page["records"]
        assert page["nextCursor"] == page["records"][-1]["id"]
        if not page["hasMore"]:
            break
        after = page["nextCursor"]
    assert pages == 4
    assert seen == records


async def test_aggregates(admin, clock):
    await insert_all(
        admin, metric("cpu", 72.5), metric("memory", 4200, "MB"), metric("cpu", 95.5), metric("disk", -8, "GB")
    )

    async def aggregate(op: str, field: str, **filter_spec) -> object:
        return await admin.ok(f"store.{op}", bucket="metrics", field=field, **filter_spec)

    assert await admin.request("store.sum", bucket="metrics", field="value") == {
        "id": 6,
        "type": "result",
        "data": 4360,
    }
    assert await aggregate("avg", "value") == 1090
    assert await aggregate("min", "value") == -8
    assert await aggregate("max", "value") == 4200
    # Integral results come back as integers.
    for op in ("sum", "avg", "min", "max"):
        assert type(await aggregate(op, "value")) is int, op

    cpu = {"filter": {"name": "cpu"}}
    assert await aggregate("sum", "value", **cpu) == 168
    assert type(await aggregate("sum", "value", **cpu)) is int
    assert await aggregate("avg", "value", **cpu) == 84
    assert await aggregate("min", "value", **cpu) == 72.5
    assert await aggregate("max", "value", **cpu) == 95.5
    assert await aggregate("sum", "value", filter={"value": {"$lt": 80}}) == 64.5
    assert await aggregate("avg", "value", filter={"value": {"$lt": 80}}) == 32.25
    assert await aggregate("max", "timestamp") == 1706745600000
    assert type(await aggregate("max", "timestamp")) is int

    # Of nothing: sum and avg 0, min and max null.
    nothing = {"filter": {"name": "net"}}
    assert await admin.request("store.sum", bucket="metrics", field="value", **nothing) == {
        "id": 23,
        "type": "result",
        "data": 0,
    }
    assert await aggregate("avg", "value", **nothing) == 0
    assert await admin.request("store.min", bucket="metrics", field="value", **nothing) == {
        "id": 25,
        "type": "result",
        "data": None,
    }
    assert await aggregate("max", "value", **nothing) is None
    assert await admin.ok("store.sum", bucket="alerts", field="threshold") == 0
    assert await admin.ok("store.avg", bucket="alerts", field="threshold") == 0
    assert await admin.ok("store.min", bucket="alerts", field="threshold") is None
    assert await admin.ok("store.max", bucket="alerts", field="threshold") is None

    # A string field has no numbers to aggregate.
    assert [await aggregate(op, "name") for op in ("sum", "avg", "min", "max")] == [0, 0, None, None]
    assert [await aggregate(op, "unit") for op in ("sum", "avg", "min", "max")] == [0, 0, None, None]


async def test_buckets(admin):
    assert await admin.request("store.buckets") == {
        "id": 2,
        "type": "result",
        "data": {"count": 2, "names": ["metrics", "alerts"]},
    }


async def test_stats(admin, connect):
    def stats(metrics: int, alerts: int, subscriptions: int) -> dict:
        return {
            "name": "dashboard",
            "buckets": {"count": 2, "names": ["metrics", "alerts"]},
            "records": {"total": metrics + alerts, "perBucket": {"metrics": metrics, "alerts": alerts}},
            "indexes": {"total": 1, "perBucket": {"metrics": 1, "alerts": 0}},
            "queries": {"defined": 10, "activeSubscriptions": subscriptions},
            "persistence": {"enabled": True},
            "ttl": {"enabled": False, "checkIntervalMs": 0},
        }

    assert await admin.request("store.stats") == {"id": 2, "type": "result", "data": stats(0, 0, 0)}
    await insert_all(admin, metric("cpu"), metric("disk"))
    await admin.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 1, "timestamp": 1})
    assert await admin.ok("store.stats") == stats(2, 1, 0)

    viewer = await connect("viewer-token")
    first = await viewer.ok("store.subscribe", query="all-metrics")
    await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    await admin.ok("store.subscribe", query="all-metrics")
    assert await viewer.ok("store.stats") == stats(2, 1, 3)
    await viewer.ok("store.unsubscribe", subscriptionId=first["subscriptionId"])
    assert await admin.ok("store.stats") == stats(2, 1, 2)


# --- transactions ------------------------------------------------------------------


async def test_transaction_results_in_order(admin, clock):
    existing = await admin.ok("store.insert", bucket="metrics", data={"id": "old", **metric("cpu", 50)})
    reply = await admin.request(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": {"id": "t1", **metric("cpu", 72.5)}},
            {"op": "insert", "bucket": "metrics", "data": metric("memory", 4200, "MB")},
            {"op": "insert", "bucket": "alerts", "data": {"metric": "cpu", "threshold": 70, "timestamp": 1}},
            {"op": "where", "bucket": "metrics", "filter": {"name": "cpu"}},
            {"op": "count", "bucket": "metrics"},
            {"op": "count", "bucket": "metrics", "filter": {"value": {"$gt": 60}}},
            {"op": "get", "bucket": "metrics", "key": "t1"},
            {"op": "findOne", "bucket": "metrics", "filter": {"unit": "MB"}},
            {"op": "get", "bucket": "metrics", "key": "nope"},
            {"op": "findOne", "bucket": "alerts", "filter": {"severity": "high"}},
        ],
    )
    results = reply["data"]["results"]
    memory_key, alert_key = results[1]["data"]["id"], results[2]["data"]["id"]
    t1 = stored("t1", metric("cpu", 72.5))
    memory = stored(memory_key, metric("memory", 4200, "MB"))
    alert = stored(alert_key, {"metric": "cpu", "threshold": 70, "severity": "low", "timestamp": 1})
    assert reply == {
        "id": 3,
        "type": "result",
        "data": {
            "results": [
                {"index": 0, "data": t1},
                {"index": 1, "data": memory},
                {"index": 2, "data": alert},
                {"index": 3, "data": [existing, t1]},
                {"index": 4, "data": 3},
                {"index": 5, "data": 2},
                {"index": 6, "data": t1},
                {"index": 7, "data": memory},
                {"index": 8, "data": None},
                {"index": 9, "data": None},
            ]
        },
    }
    assert await admin.ok("store.all", bucket="metrics") == [existing, t1, memory]
    assert await admin.ok("store.all", bucket="alerts") == [alert]


async def test_transaction_reads_see_its_own_updates_and_deletes(admin, clock):
    _a, b = await insert_all(admin, {"id": "a", **metric("cpu", 1)}, {"id": "b", **metric("cpu", 2)})
    clock.now = T0 + 10
    result = await admin.ok(
        "store.transaction",
        operations=[
            {"op": "update", "bucket": "metrics", "key": "a", "data": {"value": 99}},
            {"op": "get", "bucket": "metrics", "key": "a"},
            {"op": "where", "bucket": "metrics", "filter": {"value": {"$gt": 50}}},
            {"op": "delete", "bucket": "metrics", "key": "b"},
            {"op": "get", "bucket": "metrics", "key": "b"},
            {"op": "count", "bucket": "metrics"},
            {"op": "findOne", "bucket": "metrics", "filter": {"name": "cpu"}},
            {"op": "update", "bucket": "metrics", "key": "a", "data": {"unit": "pct"}},
            {"op": "delete", "bucket": "metrics", "key": "b"},
            {"op": "insert", "bucket": "metrics", "data": {"id": "b", **metric("disk", 3)}},
            {"op": "get", "bucket": "metrics", "key": "b"},
            {"op": "count", "bucket": "metrics", "filter": {"name": "disk"}},
        ],
    )
    a2 = stored("a", metric("cpu", 99), version=2, updated=T0 + 10)
    a3 = stored("a", metric("cpu", 99, "pct"), version=3, updated=T0 + 10)
    new_b = stored("b", metric("disk", 3), created=T0 + 10)
    assert result == {
        "results": [
            {"index": 0, "data": a2},
            {"index": 1, "data": a2},
            {"index": 2, "data": [a2]},
            {"index": 3, "data": {"deleted": True}},
            {"index": 4, "data": None},
            {"index": 5, "data": 1},
            {"index": 6, "data": a2},
            {"index": 7, "data": a3},
            {"index": 8, "data": {"deleted": True}},
            {"index": 9, "data": new_b},
            {"index": 10, "data": new_b},
            {"index": 11, "data": 1},
        ]
    }
    assert await admin.ok("store.all", bucket="metrics") == [a3, new_b]
    assert b["_version"] == 1


async def test_transaction_single_read(admin, clock):
    record = await admin.ok("store.insert", bucket="metrics", data={"id": "k", **metric()})
    assert await admin.request("store.transaction", operations=[{"op": "get", "bucket": "metrics", "key": "k"}]) == {
        "id": 3,
        "type": "result",
        "data": {"results": [{"index": 0, "data": record}]},
    }
