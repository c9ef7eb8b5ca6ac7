"""The alert queries over the protocol (the real ASGI application, SQLite
and PostgreSQL): alert-status and alert-events pushes for each transition,
whole frames, and their errors."""

from __future__ import annotations

import io
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from realtime.frames import encode
from realtime.hub import get_hub
from tests.conftest import CLOCK_START

pytestmark = pytest.mark.django_db(transaction=True)

T0 = CLOCK_START  # the `clock` fixture's start


@pytest.fixture
async def admin(connect):
    return await connect("admin-token")


@pytest.fixture
async def viewer(connect):
    return await connect("viewer-token")


def push(sub: str, data: Any) -> dict[str, Any]:
    return {"type": "push", "channel": "subscription", "subscriptionId": sub, "data": data}


def entry(state: str, value: Any, since: Any, key: str = "a1", threshold: Any = 50, severity: str = "high") -> dict:
    return {
        "id": key,
        "metric": "cpu",
        "threshold": threshold,
        "severity": severity,
        "state": state,
        "since": since,
        "value": value,
    }


def event(tid: int, before: str, after: str, value: Any, at: int, threshold: Any = 50, severity: str = "high") -> dict:
    return {
        "id": tid,
        "alert": {"id": "a1", "metric": "cpu", "threshold": threshold, "severity": severity},
        "from": before,
        "to": after,
        "value": value,
        "at": at,
    }


async def add_alert(admin, **data: Any) -> dict:
    fields = {"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high", "timestamp": 1, **data}
    return await admin.ok("store.insert", bucket="alerts", data=fields)


async def insert(admin, value: float, name: str = "cpu") -> dict:
    return await admin.ok("store.insert", bucket="metrics", data={"name": name, "value": value, "timestamp": 1})


async def test_each_transition_pushes_alert_status_and_alert_events(admin, viewer, clock):
    await add_alert(admin)
    status = await viewer.ok("store.subscribe", query="alert-status")
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 2})
    assert status["data"] == [entry("no-data", None, None)]
    assert events["data"] == []
    s, e = status["subscriptionId"], events["subscriptionId"]

    clock.now = T0 + 1000
    await insert(admin, 20)  # no-data -> ok
    assert await viewer.push_for(s) == push(s, [entry("ok", 20, T0 + 1000)])
    first = (await viewer.push_for(e))["data"]
    assert first == [event(first[0]["id"], "no-data", "ok", 20, T0 + 1000)]
    tid = first[0]["id"]

    clock.now = T0 + 2000
    await insert(admin, 99.5)  # ok -> firing
    assert await viewer.push_for(s) == push(s, [entry("firing", 99.5, T0 + 2000)])
    assert await viewer.push_for(e) == push(
        e, [event(tid, "no-data", "ok", 20, T0 + 1000), event(tid + 1, "ok", "firing", 99.5, T0 + 2000)]
    )

    clock.now = T0 + 3000
    await insert(admin, 98)  # still firing: alert-status pushes the value, alert-events nothing
    assert await viewer.push_for(s) == push(s, [entry("firing", 98, T0 + 2000)])
    await insert(admin, 5, name="unwatched")
    assert await viewer.nothing()

    clock.now = T0 + 4000
    await insert(admin, 50)  # firing -> ok (at the threshold); n = 2 keeps the newest two
    assert await viewer.push_for(s) == push(s, [entry("ok", 50, T0 + 4000)])
    assert await viewer.push_for(e) == push(
        e, [event(tid + 1, "ok", "firing", 99.5, T0 + 2000), event(tid + 2, "firing", "ok", 50, T0 + 4000)]
    )
    assert await viewer.nothing()


async def test_editing_then_deleting_a_firing_alert(admin, viewer, clock):
    await insert(admin, 80)
    await add_alert(admin)
    status = await viewer.ok("store.subscribe", query="alert-status")
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 10})
    s, e = status["subscriptionId"], events["subscriptionId"]
    [created] = events["data"]
    assert status["data"] == [entry("firing", 80, T0)] and created == event(created["id"], "no-data", "firing", 80, T0)

    clock.now = T0 + 1000
    await admin.ok("store.update", bucket="alerts", key="a1", data={"threshold": 90.5, "severity": "low"})
    assert await viewer.push_for(s) == push(s, [entry("ok", 80, T0 + 1000, threshold=90.5, severity="low")])
    [first, moved] = (await viewer.push_for(e))["data"]
    assert first == created
    assert moved == event(created["id"] + 1, "firing", "ok", 80, T0 + 1000, threshold=90.5, severity="low")

    await admin.ok("store.update", bucket="alerts", key="a1", data={"threshold": 10})
    assert await viewer.push_for(s) == push(s, [entry("firing", 80, T0 + 1000, threshold=10, severity="low")])
    await viewer.push_for(e)
    await admin.ok("store.delete", bucket="alerts", key="a1")
    assert await viewer.push_for(s) == push(s, [])
    assert await viewer.nothing()  # the history stays as it was


async def test_an_alert_created_above_its_threshold_fires_from_its_creation(admin, viewer, clock):
    # The example: an alert created while its metric reads 99.
    await insert(admin, 99)
    status = await viewer.ok("store.subscribe", query="alert-status")
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 5})
    s, e = status["subscriptionId"], events["subscriptionId"]
    assert status["data"] == [] and events["data"] == []
    clock.now = T0 + 1000
    created = await add_alert(admin)
    assert created["_createdAt"] == T0 + 1000
    assert await viewer.push_for(s) == push(s, [entry("firing", 99, T0 + 1000)])
    [moved] = (await viewer.push_for(e))["data"]
    assert moved == event(moved["id"], "no-data", "firing", 99, T0 + 1000)
    # One whose metric never reported stays no-data, since null, and records nothing.
    await admin.ok("store.insert", bucket="alerts", data={"id": "a2", "metric": "gone", "threshold": 1, "timestamp": 1})
    quiet = {**entry("no-data", None, None, key="a2", threshold=1, severity="low"), "metric": "gone"}
    assert await viewer.push_for(s) == push(s, [entry("firing", 99, T0 + 1000), quiet])
    # Deleting a firing alert records nothing either: it leaves alert-status.
    await admin.ok("store.delete", bucket="alerts", key="a1")
    assert await viewer.push_for(s) == push(s, [quiet])
    assert await viewer.nothing()
    assert (await viewer.ok("store.subscribe", query="alert-events", params={"n": 5}))["data"] == [moved]


async def test_metric_deleted_and_cleared_away(admin, viewer, clock):
    await add_alert(admin)
    older = await insert(admin, 10)
    newest = await insert(admin, 90)
    status = await viewer.ok("store.subscribe", query="alert-status")
    s = status["subscriptionId"]
    assert status["data"] == [entry("firing", 90, T0)]
    clock.now = T0 + 1000
    await admin.ok("store.delete", bucket="metrics", key=newest["id"])  # the newest reading goes: back to 10
    assert await viewer.push_for(s) == push(s, [entry("ok", 10, T0 + 1000)])
    await admin.ok("store.delete", bucket="metrics", key=older["id"])
    assert await viewer.push_for(s) == push(s, [entry("no-data", None, T0 + 1000)])
    clock.now = T0 + 2000
    await insert(admin, 70)
    assert await viewer.push_for(s) == push(s, [entry("firing", 70, T0 + 2000)])
    clock.now = T0 + 3000
    await admin.ok("store.clear", bucket="metrics")
    assert await viewer.push_for(s) == push(s, [entry("no-data", None, T0 + 3000)])
    await admin.ok("store.clear", bucket="alerts")
    assert await viewer.push_for(s) == push(s, [])


async def test_alert_status_follows_the_alerts_bucket_order(admin, viewer):
    for key, metric in (("z", "b"), ("a", "a"), ("m", "c")):
        data = {"id": key, "metric": metric, "threshold": 1, "timestamp": 1}
        await admin.ok("store.insert", bucket="alerts", data=data)
    data = await viewer.ok("store.subscribe", query="alert-status")
    assert [(x["id"], x["severity"], x["state"]) for x in data["data"]] == [
        ("z", "low", "no-data"),
        ("a", "low", "no-data"),
        ("m", "low", "no-data"),
    ]


async def test_an_alert_needs_a_non_empty_metric(admin):
    reply = await admin.request("store.insert", bucket="alerts", data={"metric": "", "threshold": 1, "timestamp": 1})
    assert reply == {
        "id": reply["id"],
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": 'Validation failed for bucket "alerts": metric: Must be a non-empty string',
        "details": [{"field": "metric", "message": "Must be a non-empty string", "code": "min"}],
    }
    await admin.ok("store.insert", bucket="alerts", data={"id": "x", "metric": "m", "threshold": 1, "timestamp": 1})
    reply = await admin.request("store.update", bucket="alerts", key="x", data={"metric": ""})
    assert reply["type"] == "error" and reply["code"] == "VALIDATION_ERROR"
    assert reply["details"] == [{"field": "metric", "message": "Must be a non-empty string", "code": "min"}]
    # An alert on a metric that never reported is allowed: it has no data.
    assert (await admin.ok("store.get", bucket="alerts", key="x"))["metric"] == "m"


@pytest.mark.parametrize(
    "params, message, details",
    [
        ({}, 'Missing or invalid "n": expected positive integer', None),
        ({"n": 0}, 'Missing or invalid "n": expected positive integer', None),
        ({"n": 1.5}, 'Missing or invalid "n": expected positive integer', None),
        ({"n": "3"}, 'Missing or invalid "n": expected positive integer', None),
        (
            {"n": 3, "name": "cpu"},
            'Unknown param "name" for query "alert-events" (known: n)',
            [{"field": "name", "message": "Unknown param", "code": "unknown"}],
        ),
    ],
)
async def test_alert_events_params_are_validated(viewer, params, message, details):
    reply = await viewer.request("store.subscribe", query="alert-events", params=params)
    expected = {"id": reply["id"], "type": "error", "code": "VALIDATION_ERROR", "message": message}
    if details is not None:
        expected["details"] = details
    assert reply == expected
    assert (await viewer.ok("store.subscribe", query="alert-events", params={"n": 1}))["data"] == []


async def too_many_events(viewer, n: int) -> dict:
    reply = await viewer.request("store.subscribe", query="alert-events", params={"n": n})
    # The whole frame but its id, which request() checks answers the request's.
    return {k: v for k, v in reply.items() if k != "id"}


async def test_alert_events_n_is_bounded_by_its_own_setting(admin, viewer, limits):
    # Default 1000, well under DASHBOARD_MAX_RESULT_LIMIT (100,000).
    error = {"type": "error", "code": "VALIDATION_ERROR"}
    assert await too_many_events(viewer, 1001) == {**error, "message": 'Invalid "n": at most 1000'}
    assert (await viewer.ok("store.subscribe", query="alert-events", params={"n": 1000}))["data"] == []
    limits(MAX_ALERT_EVENTS=2)
    assert await too_many_events(viewer, 3) == {**error, "message": 'Invalid "n": at most 2'}
    # The connection stays usable, and n at the bound works.
    await add_alert(admin)
    await insert(admin, 99)
    await insert(admin, 1)
    await insert(admin, 99)
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 2})
    assert [(x["from"], x["to"]) for x in events["data"]] == [("firing", "ok"), ("ok", "firing")]
    # Other queries keep DASHBOARD_MAX_RESULT_LIMIT.
    assert (await viewer.ok("store.subscribe", query="latest-metrics", params={"n": 1001}))["data"][-1]["value"] == 99


async def test_alert_status_takes_no_params(viewer):
    reply = await viewer.request("store.subscribe", query="alert-status", params={"n": 1})
    assert reply == {
        "id": reply["id"],
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": 'Unknown param "n" for query "alert-status" (known: none)',
        "details": [{"field": "n", "message": "Unknown param", "code": "unknown"}],
    }


async def test_a_metric_pruned_away_pushes_no_data(admin, viewer, clock):
    await add_alert(admin)
    old = 1_000_000  # a timestamp in 1970: older than any retention
    await admin.ok("store.insert", bucket="metrics", data={"name": "cpu", "value": 80, "timestamp": old})
    status = await viewer.ok("store.subscribe", query="alert-status")
    s = status["subscriptionId"]
    assert status["data"] == [entry("firing", 80, T0)]
    clock.now = T0 + 5000
    out = io.StringIO()
    await sync_to_async(call_command)("prune_metrics", "--older-than", "7d", "--raw-only", stdout=out)
    assert out.getvalue().startswith("deleted 1 metric(s) older than 7d")
    assert await viewer.push_for(s) == push(s, [entry("no-data", None, T0 + 5000)])
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 1})
    assert [(e["from"], e["to"], e["value"], e["at"]) for e in events["data"]] == [
        ("firing", "no-data", None, T0 + 5000)
    ]


async def test_alert_queries_are_evaluated_only_for_watched_names(admin, viewer):
    await add_alert(admin)
    status = await viewer.ok("store.subscribe", query="alert-status")
    count = await viewer.ok("store.subscribe", query="metric-count")  # a witness that changes are applied
    await viewer.ok("store.subscribe", query="alert-events", params={"n": 5})
    hub = get_hub()
    lives = [hub.queries.live[("alert-status", encode({}))], hub.queries.live[("alert-events", encode({"n": 5}))]]
    assert [live.names for live in lives] == [{"metrics": frozenset({"cpu"})}] * 2
    before = [live.evaluations for live in lives]
    await insert(admin, 5, name="unwatched")
    assert (await viewer.push_for(count["subscriptionId"]))["data"] == 1
    assert [live.evaluations for live in lives] == before
    await insert(admin, 99)
    assert (await viewer.push_for(status["subscriptionId"]))["data"][0]["state"] == "firing"
    assert [live.evaluations for live in lives] == [n + 1 for n in before]


async def test_without_alerts_no_reading_evaluates_the_alert_queries(admin, viewer):
    status = await viewer.ok("store.subscribe", query="alert-status")
    count = await viewer.ok("store.subscribe", query="metric-count")
    await viewer.ok("store.subscribe", query="alert-events", params={"n": 5})
    assert status["data"] == []
    hub = get_hub()
    lives = [hub.queries.live[("alert-status", encode({}))], hub.queries.live[("alert-events", encode({"n": 5}))]]
    assert [live.buckets for live in lives] == [{"alerts"}] * 2
    before = [live.evaluations for live in lives]
    await insert(admin, 5)
    assert (await viewer.push_for(count["subscriptionId"]))["data"] == 1
    assert [live.evaluations for live in lives] == before
    # The first alert makes them read its metric's readings.
    await add_alert(admin)
    pushed = (await viewer.push_for(status["subscriptionId"]))["data"]
    assert [(entry["metric"], entry["state"]) for entry in pushed] == [("cpu", "ok")]
    assert [live.names for live in lives] == [{"metrics": frozenset({"cpu"})}] * 2
