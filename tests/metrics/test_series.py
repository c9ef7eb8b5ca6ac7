"""The `metric-series` reactive query over the protocol: results, pushes,
sliding windows, and every validation error."""

from __future__ import annotations

import time

import pytest

from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)

T0 = 1_800_057_600_000  # a multiple of every tier and of a 2-day step (20,834 days)


def series_params(**params):
    return {"name": "cpu", "points": 60, **params}


async def test_fixed_range_result_and_push_of_a_late_reading(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    for value, offset in [(1, 0), (3, 500), (5, 61_000), (7, 125_000)]:
        await admin.ok("store.insert", bucket="metrics", data=metric("cpu", value, "%", T0 + offset))
    await admin.ok("store.insert", bucket="metrics", data=metric("mem", 9, "B", T0 + 1000))
    reply = await viewer.ok(
        "store.subscribe", query="metric-series", params=series_params(**{"from": T0, "to": T0 + 179_999, "points": 3})
    )
    sub = reply["subscriptionId"]
    assert reply["data"] == {
        "name": "cpu",
        "unit": "%",
        "from": T0,
        "to": T0 + 179_999,
        "step": 60_000,
        "points": [
            {"t": T0, "count": 2, "min": 1, "max": 3, "avg": 2},
            {"t": T0 + 60_000, "count": 1, "min": 5, "max": 5, "avg": 5},
            {"t": T0 + 120_000, "count": 1, "min": 7, "max": 7, "avg": 7},
        ],
    }
    # Another name, or a reading outside the range: the result is the same, no push.
    await admin.ok("store.insert", bucket="metrics", data=metric("mem", 1, "B", T0 + 2000))
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 100, "%", T0 + 180_000))
    assert await viewer.nothing()
    # A reading that arrives late, out of order, lands in its own bucket.
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", -1, "%", T0 + 70_000))
    assert await viewer.push_for(sub) == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub,
        "data": {
            "name": "cpu",
            "unit": "%",
            "from": T0,
            "to": T0 + 179_999,
            "step": 60_000,
            "points": [
                {"t": T0, "count": 2, "min": 1, "max": 3, "avg": 2},
                {"t": T0 + 60_000, "count": 2, "min": -1, "max": 5, "avg": 2},
                {"t": T0 + 120_000, "count": 1, "min": 7, "max": 7, "avg": 7},
            ],
        },
    }


async def test_gaps_are_left_out_and_a_transaction_pushes_once(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    params = series_params(**{"from": T0, "to": T0 + 3_600_000 - 1, "points": 60})
    sub = (await viewer.ok("store.subscribe", query="metric-series", params=params))["subscriptionId"]
    count_sub = (await viewer.ok("store.subscribe", query="metric-count"))["subscriptionId"]
    # Two bursts with an outage between: minutes 0-1 and 50.
    operations = [
        {"op": "insert", "bucket": "metrics", "data": metric("cpu", v, "%", T0 + at)}
        for v, at in [(10, 0), (20, 30_000), (30, 60_000), (40, 3_000_000), (50, 3_010_000), (60, 3_020_000)]
    ]
    await admin.ok("store.transaction", operations=operations)
    push = await viewer.push_for(sub)
    assert push["data"]["step"] == 60_000
    assert push["data"]["points"] == [
        {"t": T0, "count": 2, "min": 10, "max": 20, "avg": 15},
        {"t": T0 + 60_000, "count": 1, "min": 30, "max": 30, "avg": 30},
        {"t": T0 + 3_000_000, "count": 3, "min": 40, "max": 60, "avg": 50},
    ]
    assert (await viewer.push_for(count_sub))["data"] == 6
    assert await viewer.nothing()  # one push per subscription for the transaction


async def test_range_edges_are_exact_at_a_coarse_step(connect):
    """A range that starts and ends inside buckets counts only its readings,
    although whole buckets come from the tiers."""
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    day = 86_400_000
    for at in (-1, 0, 3_599_999, day, 2 * day - 1, 2 * day, 2 * day + 1):
        await admin.ok("store.insert", bucket="metrics", data=metric("cpu", at, "%", T0 + at))
    data = (
        await viewer.ok(
            "store.subscribe",
            query="metric-series",
            params=series_params(**{"from": T0, "to": T0 + 2 * day, "points": 2}),
        )
    )["data"]
    assert data["step"] == 2 * day
    assert data["points"] == [
        {"t": T0, "count": 4, "min": 0, "max": 2 * day - 1, "avg": (0 + 3_599_999 + day + 2 * day - 1) / 4},
        {"t": T0 + 2 * day, "count": 1, "min": 2 * day, "max": 2 * day, "avg": 2 * day},
    ]


async def test_sliding_window_moves_with_time_without_writes(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    now = int(time.time() * 1000)
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 5, "%", now))
    reply = await viewer.ok("store.subscribe", query="metric-series", params=series_params(last=2000, points=2))
    first = reply["data"]
    assert first["step"] == 1000 and first["to"] - first["from"] == 2000
    assert first["points"] == [{"t": now // 1000 * 1000, "count": 1, "min": 5, "max": 5, "avg": 5}]
    # No write: the next second's boundary alone moves the window.
    moved = (await viewer.push_for(reply["subscriptionId"]))["data"]
    assert (moved["from"], moved["to"]) == (first["from"] + 1000, first["to"] + 1000)
    assert moved["points"] == first["points"]  # the reading is still inside


async def test_sliding_window_pushes_a_reading_that_lands_in_it(connect):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    reply = await viewer.ok("store.subscribe", query="metric-series", params=series_params(last=3_600_000, points=360))
    assert reply["data"]["step"] == 10_000 and reply["data"]["points"] == []
    now = int(time.time() * 1000)
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 7, "%", now))
    data = (await viewer.push_for(reply["subscriptionId"]))["data"]
    assert data["points"] == [{"t": now // 10_000 * 10_000, "count": 1, "min": 7, "max": 7, "avg": 7}]


async def test_a_name_with_no_readings_is_an_empty_series(connect):
    viewer = await connect("viewer-token")
    data = (
        await viewer.ok(
            "store.subscribe", query="metric-series", params={"name": "nothing", "points": 10, "from": 0, "to": 1000}
        )
    )["data"]
    assert data == {"name": "nothing", "unit": "", "from": 0, "to": 1000, "step": 1000, "points": []}


@pytest.mark.parametrize(
    "params, message",
    [
        ({"points": 10, "last": 1000}, 'Missing or invalid "name": expected non-empty string'),
        ({"name": "", "points": 10, "last": 1000}, 'Missing or invalid "name": expected non-empty string'),
        ({"name": "cpu", "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": 0, "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": 2001, "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": 1.5, "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": True, "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": "10", "last": 1000}, 'Missing or invalid "points": expected integer from 1 to 2000'),
        ({"name": "cpu", "points": 10}, 'metric-series needs either "from" and "to", or "last"'),
        (
            {"name": "cpu", "points": 10, "from": 0, "to": 1, "last": 5},
            'metric-series needs either "from" and "to", or "last"',
        ),
        (
            {"name": "cpu", "points": 10, "from": 0},
            'Missing or invalid "to": expected finite number (ms since epoch) up to 8640000000000000',
        ),
        (
            {"name": "cpu", "points": 10, "from": "0", "to": 5},
            'Missing or invalid "from": expected finite number (ms since epoch) up to 8640000000000000',
        ),
        (
            {"name": "cpu", "points": 10, "from": 0, "to": 9e15},
            'Missing or invalid "to": expected finite number (ms since epoch) up to 8640000000000000',
        ),
        ({"name": "cpu", "points": 10, "from": 5, "to": 4}, 'Invalid "to": must not be before "from"'),
        (
            {"name": "cpu", "points": 10, "last": 0},
            'Missing or invalid "last": expected positive number of ms up to 8640000000000000',
        ),
        (
            {"name": "cpu", "points": 10, "last": -5},
            'Missing or invalid "last": expected positive number of ms up to 8640000000000000',
        ),
    ],
)
async def test_invalid_params_are_validation_errors_and_the_connection_stays_usable(connect, params, message):
    viewer = await connect("viewer-token")
    assert await viewer.request("store.subscribe", query="metric-series", params=params) == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": message,
    }
    assert (await viewer.ok("auth.whoami"))["authenticated"] is True


@pytest.mark.parametrize(
    "query, params, message",
    [
        ("all-metrics", {"junk": 1}, 'Unknown param "junk" for query "all-metrics" (known: none)'),
        ("metric-count", {"n": 1}, 'Unknown param "n" for query "metric-count" (known: none)'),
        ("latest-metrics", {"n": 5, "name": "cpu"}, 'Unknown param "name" for query "latest-metrics" (known: n)'),
        (
            "metric-series",
            {"name": "cpu", "points": 5, "last": 1000, "step": 5},
            'Unknown param "step" for query "metric-series" (known: from, last, name, points, to)',
        ),
    ],
)
async def test_unknown_params_keys_are_validation_errors(connect, query, params, message):
    viewer = await connect("viewer-token")
    reply = await viewer.request("store.subscribe", query=query, params=params)
    assert reply == {
        "id": 2,
        "type": "error",
        "code": "VALIDATION_ERROR",
        "message": message,
        "details": [{"field": message.split('"')[1], "message": "Unknown param", "code": "unknown"}],
    }
    assert (await viewer.ok("store.stats"))["queries"]["activeSubscriptions"] == 0
