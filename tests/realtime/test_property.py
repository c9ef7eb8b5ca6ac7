"""Property (in the spirit of Zulip's verify_action): after any sequence of
writes, every subscriber's last result equals a fresh evaluation of its query,
and no push repeats the result sent before it."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from channels.layers import channel_layers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime import hub as hubs
from tests.conftest import Client, metric

NAMES = ["cpu", "mem", "disk"]

SUBSCRIPTIONS = [
    ("all-metrics", None, ("store.all", {"bucket": "metrics"})),
    ("metrics-by-name", {"name": "cpu"}, ("store.where", {"bucket": "metrics", "filter": {"name": "cpu"}})),
    ("metrics-by-name", {"name": "mem"}, ("store.where", {"bucket": "metrics", "filter": {"name": "mem"}})),
    ("metric-count", None, ("store.count", {"bucket": "metrics"})),
    ("latest-metrics", {"n": 3}, ("store.last", {"bucket": "metrics", "n": 3})),
    ("active-alerts", None, ("store.all", {"bucket": "alerts"})),
    # No store operation reads alert states: a fresh subscription does.
    ("alert-status", None, ("store.subscribe", {"query": "alert-status"})),
    ("alert-events", {"n": 3}, ("store.subscribe", {"query": "alert-events", "params": {"n": 3}})),
]

write = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(NAMES), st.integers(0, 100)),
    st.tuples(st.just("update"), st.integers(0, 50), st.sampled_from([*NAMES, None]), st.integers(0, 100)),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("alert"), st.sampled_from(["low", "medium", "high"])),
)
step = st.one_of(
    write,
    st.tuples(st.just("clear")),
    st.tuples(st.just("transaction"), st.lists(write, min_size=1, max_size=4), st.booleans()),
)


def _operation(choice: tuple, keys: list[str]) -> dict | None:
    kind = choice[0]
    if kind == "insert":
        return {"op": "insert", "bucket": "metrics", "data": metric(choice[1], choice[2])}
    if kind == "alert":
        return {
            "op": "insert",
            "bucket": "alerts",
            "data": {"metric": "cpu", "threshold": 1, "severity": choice[1], "timestamp": 1},
        }
    if not keys:
        return None
    key = keys[choice[1] % len(keys)]
    if kind == "update":
        data = {"value": choice[3]} if choice[2] is None else {"name": choice[2], "value": choice[3]}
        return {"op": "update", "bucket": "metrics", "key": key, "data": data}
    return {"op": "delete", "bucket": "metrics", "key": key}


async def _run(communicators_open, steps: list[tuple]) -> None:
    admin, viewer = await communicators_open()
    await admin.ok("store.clear", bucket="metrics")
    await admin.ok("store.clear", bucket="alerts")
    subs: dict[str, tuple] = {}
    for query, params, fresh in SUBSCRIPTIONS:
        fields = {"query": query, **({"params": params} if params else {})}
        reply = await viewer.ok("store.subscribe", **fields)
        subs[reply["subscriptionId"]] = (fresh, [reply["data"]])

    keys: list[str] = []
    for choice in steps:
        if choice[0] == "clear":
            await admin.ok("store.clear", bucket="metrics")
            keys.clear()
        elif choice[0] == "transaction":
            operations = [op for op in (_operation(w, keys) for w in choice[1]) if op]
            if not operations:
                continue
            if choice[2]:  # make it fail at the end: nothing may be written or pushed
                operations.append({"op": "update", "bucket": "metrics", "key": "missing", "data": {}})
                assert (await admin.request("store.transaction", operations=operations))["code"] == "NOT_FOUND"
                continue
            reply = await admin.request("store.transaction", operations=operations)
            if reply["type"] == "error":
                # Deleting then updating one key fails the whole transaction:
                # a legitimate rollback, checked like the forced ones.
                assert reply["code"] == "NOT_FOUND", reply
                continue
            _track(keys, operations, [r["data"] for r in reply["data"]["results"]])
        else:
            operation = _operation(choice, keys)
            if operation is None:
                continue
            op = operation.pop("op")
            data = await admin.ok(f"store.{op}", **operation)
            _track(keys, [{"op": op, **operation}], [data])

    def absorb(frames: list[dict]) -> None:
        for frame in frames:
            subs[frame["subscriptionId"]][1].append(frame["data"])
        frames.clear()

    expected = {sid: await _fresh(admin, *fresh) for sid, (fresh, _) in subs.items()}
    for subscription_id, (_, seen) in subs.items():
        absorb(viewer.pushes)
        while seen[-1] != expected[subscription_id]:
            seen.append((await viewer.push_for(subscription_id))["data"])
    # Whatever else arrives must not change the final state.
    absorb(viewer.pushes)
    while not await viewer.communicator.receive_nothing(timeout=0.2):
        absorb([await viewer.push()])
    for subscription_id, (_, seen) in subs.items():
        assert seen[-1] == expected[subscription_id]
        for before, after in itertools.pairwise(seen):
            assert before != after, f"{subscription_id} received the same result twice in a row"


async def _fresh(admin: Client, operation: str, fields: dict) -> object:
    data = await admin.ok(operation, **fields)
    if operation != "store.subscribe":
        return data
    await admin.ok("store.unsubscribe", subscriptionId=data["subscriptionId"])
    return data["data"]


def _track(keys: list[str], operations: list[dict], results: list) -> None:
    for operation, result in zip(operations, results, strict=False):
        if operation["op"] == "insert" and operation["bucket"] == "metrics":
            keys.append(result["id"])
        elif operation["op"] == "delete" and operation["key"] in keys:
            keys.remove(operation["key"])


@pytest.mark.django_db(transaction=True)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=12))
def test_subscribers_converge_on_fresh_results(steps):
    async def scenario():
        # Each example runs on a fresh event loop: fresh layer and hub too.
        channel_layers.backends = {}
        hubs.forget_all()
        from channels.testing import WebsocketCommunicator

        from dashboard_project.asgi import application

        communicators = []

        async def open_pair():
            clients = []
            for token in ("admin-token", "viewer-token"):
                communicator = WebsocketCommunicator(application, "/ws/")
                assert (await communicator.connect())[0]
                communicators.append(communicator)
                client = Client(communicator)
                await client.receive()  # welcome
                await client.login(token)
                clients.append(client)
            return clients

        try:
            await _run(open_pair, steps)
        finally:
            for communicator in communicators:
                await communicator.disconnect()
            await hubs.stop_all()

    asyncio.run(scenario())
