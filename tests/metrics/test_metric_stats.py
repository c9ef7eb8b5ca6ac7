"""The `metric-stats` reactive query and the selector behind it."""

from __future__ import annotations

import pytest

from metrics import derived, selectors, services
from metrics.models import Metric
from metrics.schema import BUCKETS
from tests.conftest import metric

METRICS = BUCKETS["metrics"]


def insert(name: str, value: float, unit: str = "%", timestamp: int = 1706745600000) -> dict:
    return services.record_insert(bucket=METRICS, data=metric(name, value, unit, timestamp))


@pytest.mark.django_db
def test_stats_per_name_sorted_by_name():
    assert selectors.record_stats_by_name(bucket=METRICS) == []
    insert("memory", 4200, "MB")
    insert("cpu", 72.5)
    insert("cpu", 10)
    insert("memory", 4000.5, "MB")
    insert("cpu", 90)
    assert selectors.record_stats_by_name(bucket=METRICS) == [
        {"name": "cpu", "count": 3, "min": 10, "max": 90, "avg": 57.5, "last": 90, "unit": "%"},
        {"name": "memory", "count": 2, "min": 4000.5, "max": 4200, "avg": 4100.25, "last": 4000.5, "unit": "MB"},
    ]


@pytest.mark.django_db
def test_last_is_the_newest_by_insertion_not_by_timestamp():
    insert("cpu", 1, timestamp=2000)
    insert("cpu", 2, timestamp=1000)
    [cpu] = selectors.record_stats_by_name(bucket=METRICS)
    assert (cpu["last"], cpu["count"]) == (2, 2)


@pytest.mark.django_db
def test_last_follows_updates_and_deletes_of_the_newest():
    insert("cpu", 1)
    newest = insert("cpu", 2, unit="pct")
    services.record_update(bucket=METRICS, key=newest["id"], data={"value": 5})
    [cpu] = selectors.record_stats_by_name(bucket=METRICS)
    assert cpu == {"name": "cpu", "count": 2, "min": 1, "max": 5, "avg": 3, "last": 5, "unit": "pct"}
    services.record_delete(bucket=METRICS, key=newest["id"])
    [cpu] = selectors.record_stats_by_name(bucket=METRICS)
    assert cpu == {"name": "cpu", "count": 1, "min": 1, "max": 1, "avg": 1, "last": 1, "unit": "%"}


@pytest.mark.django_db
def test_one_statement_for_ten_thousand_metrics_after_a_bulk_load(django_assert_num_queries):
    names = [f"m{i}" for i in range(20)]
    # bulk_create sends no model signals: the figures are rebuilt afterwards,
    # as `manage.py rebuild_aggregates` does after a load by SQL.
    Metric.objects.bulk_create(
        Metric(name=names[i % 20], value=i, unit="ms", timestamp=i, key=f"k{i}", created_at=1, updated_at=1)
        for i in range(10_000)
    )
    assert selectors.record_stats_by_name(bucket=METRICS) == []
    derived.rebuild()
    with django_assert_num_queries(1):
        stats = selectors.record_stats_by_name(bucket=METRICS)
    assert [s["name"] for s in stats] == sorted(names)
    m0 = stats[0]
    assert m0 == {"name": "m0", "count": 500, "min": 0, "max": 9980, "avg": 4990, "last": 9980, "unit": "ms"}


@pytest.mark.django_db(transaction=True)
async def test_subscription_pushes_the_new_summary_after_each_change(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 50))
    subscribed = await viewer.ok("store.subscribe", query="metric-stats")
    sub = subscribed["subscriptionId"]
    assert subscribed["data"] == [
        {"name": "cpu", "count": 1, "min": 50, "max": 50, "avg": 50, "last": 50, "unit": "%"},
    ]

    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 70))
    assert await viewer.push_for(sub) == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub,
        "data": [{"name": "cpu", "count": 2, "min": 50, "max": 70, "avg": 60, "last": 70, "unit": "%"}],
    }
    await admin.ok("store.insert", bucket="metrics", data=metric("disk", 0.5, "GB"))
    assert (await viewer.push_for(sub))["data"] == [
        {"name": "cpu", "count": 2, "min": 50, "max": 70, "avg": 60, "last": 70, "unit": "%"},
        {"name": "disk", "count": 1, "min": 0.5, "max": 0.5, "avg": 0.5, "last": 0.5, "unit": "GB"},
    ]

    # An alert does not change the summary: no push.
    await admin.ok("store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 60, "timestamp": 1})
    assert await viewer.nothing()

    await admin.ok("store.clear", bucket="metrics")
    assert (await viewer.push_for(sub))["data"] == []


@pytest.mark.django_db(transaction=True)
async def test_latest_metrics_by_name_is_a_sliding_window(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    cpu = [await admin.ok("store.insert", bucket="metrics", data=metric("cpu", v)) for v in (1, 2, 3)]
    await admin.ok("store.insert", bucket="metrics", data=metric("memory", 9))
    reply = await viewer.ok("store.subscribe", query="latest-metrics-by-name", params={"name": "cpu", "n": 2})
    assert reply["data"] == cpu[1:]  # the newest two, oldest first
    await admin.ok("store.insert", bucket="metrics", data=metric("memory", 10))
    assert await viewer.nothing()  # another name: the window is unchanged
    newest = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 4))
    assert await viewer.push() == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": reply["subscriptionId"],
        "data": [cpu[2], newest],
    }
    assert await viewer.request("store.subscribe", query="latest-metrics-by-name", params={"name": "cpu"}) == {
        "id": 3,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": 'Missing or invalid "n": expected positive integer',
    }
