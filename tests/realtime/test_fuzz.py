"""Fuzzing the consumer with generated frames: never a crash, never a close,
one well-formed reply per request, and a viewer changes nothing."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard_project.asgi import application
from realtime import hub as hubs
from realtime.actions import ACTIONS
from realtime.errors import (
    BUCKET_NOT_DEFINED,
    CONFLICT,
    FORBIDDEN,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    NOT_FOUND,
    PARSE_ERROR,
    QUERY_NOT_DEFINED,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNKNOWN_OPERATION,
    VALIDATION_ERROR,
)

# Every expected code; INTERNAL_ERROR is left out on purpose: it would mean a crash.
CODES = {
    BUCKET_NOT_DEFINED,
    CONFLICT,
    FORBIDDEN,
    INVALID_REQUEST,
    NOT_FOUND,
    PARSE_ERROR,
    QUERY_NOT_DEFINED,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNKNOWN_OPERATION,
    VALIDATION_ERROR,
}
OPERATORS = [
    "$eq",
    "$neq",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$contains",
    "$startsWith",
    "$endsWith",
    "$exists",
    "$between",
    "$or",
    "$and",
    "$regex",
    "$where",
    "__class__",
]
FIELDS = [
    "id",
    "name",
    "value",
    "unit",
    "timestamp",
    "_version",
    "metric",
    "severity",
    "seq",
    "key",
    "pk",
    "name__startswith",
    "__dict__",
]

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e308, 2**53 + 1]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=30),
    st.text(alphabet="\u00e9\u4e2d\U0001f600\u200b", max_size=10),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
conditions = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(OPERATORS), json_values, min_size=1, max_size=3),
)
filters = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from([*FIELDS, "$or", "$and"]), conditions, max_size=3),
)
request_fields = st.fixed_dictionaries(
    {},
    optional={
        "bucket": st.one_of(st.sampled_from(["metrics", "alerts", "nope", ""]), json_values),
        "data": st.one_of(json_values, st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=5)),
        "filter": filters,
        "key": json_values,
        "n": st.one_of(numbers, json_values),
        "limit": st.one_of(numbers, json_values),
        "field": st.one_of(st.sampled_from(FIELDS), json_values),
        "query": st.one_of(st.sampled_from(["all-metrics", "metrics-by-name", "latest-metrics", "x"]), json_values),
        "params": st.one_of(json_values, st.fixed_dictionaries({}, optional={"n": numbers, "name": scalars})),
        "subscriptionId": json_values,
        "operations": st.one_of(
            json_values,
            st.lists(
                st.dictionaries(st.sampled_from(["op", "bucket", "data", "key", "filter"]), json_values), max_size=3
            ),
        ),
        "token": json_values,
        "timestamp": json_values,
    },
)
requests = st.builds(
    lambda kind, rid, fields: {"type": kind, "id": rid, **fields},
    st.one_of(st.sampled_from([*sorted(ACTIONS), "pong", "ping", "store.x", "auth.x", "x"]), json_values),
    st.one_of(numbers, json_values),
    request_fields,
)
raw_texts = st.one_of(
    st.text(max_size=50),
    st.sampled_from(
        [
            "NaN",
            '{"id":1,"type":"store.all","bucket":"metrics","x":NaN}',
            "1e999",
            '{"id":1e999,"type":"store.all"}',
            "[" * 5000 + "]" * 5000,
            '{"id":1,"type":"store.get","bucket":"metrics","key":"\\ud800"}',
            '{"id":1,"type":"auth.whoami"}' + " " * 10_000,
            "\u0000",
            '{"id":1,"type":"x"',
        ]
    ),
    st.builds(
        lambda n: '{"id":1,"type":"store.where","bucket":"metrics","filter":' + '{"$or":[' * n + "{}" + "]}" * n + "}",
        st.integers(1, 300),
    ),
    st.builds(
        lambda s: json.dumps({"id": 2, "type": "store.insert", "bucket": "metrics", "data": {"name": s}}),
        st.text(min_size=5000, max_size=20000),
    ),
)
# Well-formed envelopes around fuzzed contents reach deep into filters and
# validation, which random envelopes rarely do.
operands = st.one_of(json_values, st.lists(scalars, max_size=4))
VALID_FIELDS = st.sampled_from(["name", "value", "unit", "timestamp", "id", "_version"])
deep_filters = st.recursive(
    st.dictionaries(
        st.one_of(VALID_FIELDS, VALID_FIELDS, VALID_FIELDS, st.sampled_from(FIELDS)),
        st.one_of(scalars, st.dictionaries(st.sampled_from(OPERATORS), operands, min_size=1, max_size=1)),
        min_size=1,
        max_size=2,
    ),
    lambda inner: st.dictionaries(
        st.sampled_from(["$or", "$and", "name"]), st.one_of(st.lists(inner, max_size=3), inner), max_size=2
    ),
    max_leaves=6,
)
buckets = st.sampled_from(["metrics", "alerts"])
records = st.dictionaries(st.sampled_from(FIELDS), scalars, max_size=6)
reads = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**6),
        "type": st.sampled_from(
            [
                "store.where",
                "store.findOne",
                "store.count",
                "store.sum",
                "store.avg",
                "store.min",
                "store.max",
                "store.get",
                "store.paginate",
                "store.last",
            ]
        ),
        "bucket": buckets,
        "filter": deep_filters,
        "field": st.sampled_from(FIELDS),
        "key": scalars,
        "limit": numbers,
        "n": numbers,
        "after": scalars,
    }
)
writes = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**6),
        "type": st.sampled_from(["store.insert", "store.update", "store.delete", "store.transaction"]),
        "bucket": buckets,
        "data": records,
        "key": scalars,
        "operations": st.lists(
            st.fixed_dictionaries(
                {
                    "op": st.sampled_from(["get", "insert", "update", "delete", "where", "findOne", "count", "x"]),
                    "bucket": buckets,
                },
                optional={"data": records, "key": scalars, "filter": deep_filters},
            ),
            min_size=1,
            max_size=4,
        ),
    }
)
subscribes = st.fixed_dictionaries(
    {
        "id": st.integers(1, 10**6),
        "type": st.just("store.subscribe"),
        "query": st.sampled_from(["all-metrics", "metrics-by-name", "metric-count", "latest-metrics", "active-alerts"]),
        "params": st.one_of(json_values, st.dictionaries(st.sampled_from(["n", "name"]), scalars, max_size=2)),
    }
)
frames = st.one_of(
    st.one_of(requests, reads, reads, reads, writes, writes, subscribes).map(lambda r: json.dumps(r, allow_nan=True)),
    raw_texts,
)


def expects_reply(text: str) -> bool:
    """False only for a valid pong, the one frame the protocol leaves unanswered."""
    try:
        message = json.loads(text, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError):
        return True
    if not isinstance(message, dict) or message.get("type") != "pong":
        return True
    stamp = message.get("timestamp")
    return not (isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and _finite(stamp))


def _finite(number) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


@pytest.mark.django_db(transaction=True)
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(batch=st.lists(frames, min_size=1, max_size=8), as_admin=st.booleans())
def test_generated_frames_get_one_well_formed_answer_each(batch, as_admin):
    async def scenario():
        channel_layers.backends = {}
        hubs.forget_all()
        admin = WebsocketCommunicator(application, "/ws/")
        client = WebsocketCommunicator(application, "/ws/")
        try:
            for communicator, token in (
                (admin, "admin-token"),
                (client, "admin-token" if as_admin else "viewer-token"),
            ):
                assert (await communicator.connect())[0]
                await communicator.receive_json_from()
                await communicator.send_json_to({"id": 1, "type": "auth.login", "token": token})
                assert (await communicator.receive_json_from())["type"] == "result"
            await admin.send_json_to(
                {
                    "id": 2,
                    "type": "store.insert",
                    "bucket": "metrics",
                    "data": {"name": "seed", "value": 1, "timestamp": 1},
                }
            )
            assert (await admin.receive_json_from())["type"] == "result"
            await admin.send_json_to({"id": 3, "type": "store.all", "bucket": "metrics"})
            before = (await admin.receive_json_from())["data"]

            for text in batch:
                # send_input: the communicator's send_to refuses empty text.
                await client.send_input({"type": "websocket.receive", "text": text})
                if not expects_reply(text):
                    continue
                while True:
                    output = await client.receive_output(timeout=5)
                    assert output["type"] == "websocket.send", f"connection closed on {text[:200]!r}: {output}"
                    frame = json.loads(output["text"])
                    if frame["type"] != "push":
                        break
                assert frame["type"] in ("result", "error"), frame
                if frame["type"] == "error":
                    assert frame["code"] in CODES and frame["code"] != INTERNAL_ERROR, frame
                    assert isinstance(frame["message"], str) and "Traceback" not in frame["message"]
                    assert set(frame) <= {"id", "type", "code", "message", "details"}
            # Still usable afterwards.
            await client.send_json_to({"id": 99, "type": "auth.whoami"})
            while (frame := await client.receive_json_from(timeout=5))["type"] == "push":
                pass
            assert frame["id"] == 99 and frame["type"] == "result"
            if not as_admin:
                await admin.send_json_to({"id": 4, "type": "store.all", "bucket": "metrics"})
                assert (await admin.receive_json_from())["data"] == before, "a viewer changed the store"
        finally:
            await admin.disconnect()
            await client.disconnect()
            await hubs.stop_all()
            from channels.db import database_sync_to_async
            from django.db import connections

            await database_sync_to_async(connections.close_all)()

    asyncio.run(scenario())
