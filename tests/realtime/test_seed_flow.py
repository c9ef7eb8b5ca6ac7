"""The seed's worked example (the flow of README.md's "Try the seed flow by
hand"), frame by frame."""

from __future__ import annotations

import time

import pytest

from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)


def push(subscription_id: str, data) -> dict:
    return {"type": "push", "channel": "subscription", "subscriptionId": subscription_id, "data": data}


def without_times(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("_createdAt", "_updatedAt")}


async def test_seed_flow_steps_1_to_6(connect):
    # Step 1: connect and authenticate.
    before = int(time.time() * 1000)
    admin = await connect()
    viewer = await connect()
    for client in (admin, viewer):
        assert set(client.welcome) == {"type", "version", "serverTime", "requiresAuth"}
        assert client.welcome["type"] == "welcome"
        assert client.welcome["version"] == "1.0.0"
        assert client.welcome["requiresAuth"] is True
        assert before - 1000 <= client.welcome["serverTime"] <= int(time.time() * 1000) + 1000

    assert await admin.request("auth.login", token="admin-token") == {
        "id": 1,
        "type": "result",
        "data": {"userId": "admin-1", "roles": ["admin"], "expiresAt": None},
    }
    assert await viewer.request("auth.login", token="viewer-token") == {
        "id": 1,
        "type": "result",
        "data": {"userId": "viewer-1", "roles": ["viewer"], "expiresAt": None},
    }

    # Step 2: the viewer subscribes.
    all_sub = await viewer.request("store.subscribe", query="all-metrics")
    cpu_sub = await viewer.request("store.subscribe", query="metrics-by-name", params={"name": "cpu"})
    count_sub = await viewer.request("store.subscribe", query="metric-count")
    sub_all, sub_cpu, sub_count = (r["data"]["subscriptionId"] for r in (all_sub, cpu_sub, count_sub))
    assert all_sub == {"id": 2, "type": "result", "data": {"subscriptionId": sub_all, "data": []}}
    assert cpu_sub == {"id": 3, "type": "result", "data": {"subscriptionId": sub_cpu, "data": []}}
    assert count_sub == {"id": 4, "type": "result", "data": {"subscriptionId": sub_count, "data": 0}}
    assert len({sub_all, sub_cpu, sub_count}) == 3
    assert all(s.startswith("sub-") and s[4:].isdigit() for s in (sub_all, sub_cpu, sub_count))

    # Step 3: the admin pushes a metric; the viewer gets three pushes.
    inserted = await admin.request("store.insert", bucket="metrics", data=metric("cpu", 72.5, "%", 1706745600000))
    record = inserted["data"]
    assert inserted["id"] == 2 and inserted["type"] == "result"
    assert without_times(record) == {
        "id": record["id"],
        "name": "cpu",
        "value": 72.5,
        "unit": "%",
        "timestamp": 1706745600000,
        "_version": 1,
    }
    assert len(record["id"]) == 36
    assert record["_createdAt"] == record["_updatedAt"] >= before
    pushes = {p["subscriptionId"]: p for p in [await viewer.push() for _ in range(3)]}
    assert pushes == {
        sub_all: push(sub_all, [record]),
        sub_cpu: push(sub_cpu, [record]),
        sub_count: push(sub_count, 1),
    }

    # Step 4: the viewer may not write.
    denied = await viewer.request(
        "store.insert", bucket="metrics", data={"name": "hack", "value": 0, "unit": "", "timestamp": 0}
    )
    assert denied == {
        "id": 5,
        "type": "error",
        "code": "FORBIDDEN",
        "message": "No permission for store.insert on metrics",
    }

    # Step 5: a transaction is one change: one push per affected subscription.
    batch = await admin.request(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": metric("memory", 4200, "MB", 1706745660000)},
            {"op": "insert", "bucket": "metrics", "data": metric("cpu", 68.1, "%", 1706745660000)},
        ],
    )
    assert batch["id"] == 3 and batch["type"] == "result"
    memory, cpu2 = (r["data"] for r in batch["data"]["results"])
    assert [r["index"] for r in batch["data"]["results"]] == [0, 1]
    assert without_times(memory) == {
        "id": memory["id"],
        "name": "memory",
        "value": 4200,
        "unit": "MB",
        "timestamp": 1706745660000,
        "_version": 1,
    }
    assert without_times(cpu2) == {
        "id": cpu2["id"],
        "name": "cpu",
        "value": 68.1,
        "unit": "%",
        "timestamp": 1706745660000,
        "_version": 1,
    }
    pushes = {p["subscriptionId"]: p for p in [await viewer.push() for _ in range(3)]}
    assert pushes == {
        sub_all: push(sub_all, [record, memory, cpu2]),
        sub_cpu: push(sub_cpu, [record, cpu2]),
        sub_count: push(sub_count, 3),
    }
    assert await viewer.nothing()

    # Step 6: clean up.
    assert await viewer.request("store.unsubscribe", subscriptionId=sub_all) == {
        "id": 6,
        "type": "result",
        "data": {"unsubscribed": True},
    }
    assert await admin.request("store.clear", bucket="metrics") == {
        "id": 4,
        "type": "result",
        "data": {"cleared": True},
    }
    pushes = {p["subscriptionId"]: p for p in [await viewer.push() for _ in range(2)]}
    assert pushes == {sub_cpu: push(sub_cpu, []), sub_count: push(sub_count, 0)}
    assert await viewer.nothing()


async def test_seed_alerts_exercise(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    alerts_sub = (await viewer.ok("store.subscribe", query="active-alerts"))["subscriptionId"]
    cpu_sub = (await viewer.ok("store.subscribe", query="metrics-by-name", params={"name": "cpu"}))["subscriptionId"]

    result = await admin.ok(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": metric("cpu", 95.2, "%", 1706745720000)},
            {
                "op": "insert",
                "bucket": "alerts",
                "data": {"metric": "cpu", "threshold": 90, "severity": "high", "timestamp": 1706745720000},
            },
        ],
    )
    cpu, alert = (r["data"] for r in result["results"])
    assert without_times(alert) == {
        "id": alert["id"],
        "metric": "cpu",
        "threshold": 90,
        "severity": "high",
        "timestamp": 1706745720000,
        "_version": 1,
    }
    pushes = {p["subscriptionId"]: p for p in [await viewer.push() for _ in range(2)]}
    assert pushes == {alerts_sub: push(alerts_sub, [alert]), cpu_sub: push(cpu_sub, [cpu])}
    assert await viewer.nothing()

    # Viewers read alerts but may not create them.
    denied = await viewer.request(
        "store.insert", bucket="alerts", data={"metric": "cpu", "threshold": 1, "timestamp": 1}
    )
    assert denied["code"] == "FORBIDDEN"
    assert denied["message"] == "No permission for store.insert on alerts"
    assert await viewer.ok("store.all", bucket="alerts") == [alert]


async def test_readme_alert_flow(connect):
    """README.md's "Alerts" frames: an alert on cpu (read 72.5) is ok; a
    reading above its threshold pushes the firing state and the transition."""
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 72.5, "%", 1706745600000))
    alert = await admin.ok(
        "store.insert",
        bucket="alerts",
        data={"metric": "cpu", "threshold": 90, "severity": "high", "timestamp": 1706745600000},
    )
    entry = {"id": alert["id"], "metric": "cpu", "threshold": 90, "severity": "high"}
    created = alert["_createdAt"]  # a new alert was no-data before: ok since its creation
    status = await viewer.ok("store.subscribe", query="alert-status")
    sub_status = status["subscriptionId"]
    assert status == {"subscriptionId": sub_status, "data": [{**entry, "state": "ok", "since": created, "value": 72.5}]}
    events = await viewer.ok("store.subscribe", query="alert-events", params={"n": 5})
    sub_events = events["subscriptionId"]
    [first] = events["data"]
    assert isinstance(first["id"], int)
    became_ok = {"id": first["id"], "alert": entry, "from": "no-data", "to": "ok", "value": 72.5, "at": created}
    assert events == {"subscriptionId": sub_events, "data": [became_ok]}

    before = int(time.time() * 1000)
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 97, "%", 1706745610000))
    after = int(time.time() * 1000)
    pushed = await viewer.push_for(sub_status)
    [firing] = pushed["data"]
    assert before <= firing["since"] <= after
    assert pushed == push(sub_status, [{**entry, "state": "firing", "since": firing["since"], "value": 97}])
    pushed = await viewer.push_for(sub_events)
    transition = {
        "id": first["id"] + 1,
        "alert": entry,
        "from": "ok",
        "to": "firing",
        "value": 97,
        "at": firing["since"],
    }
    assert pushed == push(sub_events, [became_ok, transition])
    assert await viewer.nothing()
