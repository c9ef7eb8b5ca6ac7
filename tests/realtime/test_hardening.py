"""Bounds on what one token holder can make a server process spend (issue 13):
distinct live queries, filter size, the compiled-filter cache, connections
that never log in, and sessions whose token was revoked without a signal."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection

from accounts.models import ApiToken
from accounts.services import token_create
from dashboard_project.asgi import application
from metrics import selectors
from realtime.hub import get_hub
from realtime.quotas import OutboxLedger
from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)


# --- distinct live queries ----------------------------------------------------------


async def test_distinct_live_queries_per_user(limits, connect):
    limits(MAX_LIVE_QUERIES_PER_USER=3)
    viewer = await connect("viewer-token")
    same_user = await connect("viewer-token")
    admin = await connect("admin-token")
    subs = [await viewer.ok("store.subscribe", query="latest-metrics", params={"n": n}) for n in (1, 2, 3)]
    refused = {
        "id": 5,
        "type": "error",
        "code": "RATE_LIMITED",
        "message": "Live query limit reached (max 3 distinct queries per user)",
    }
    assert await viewer.request("store.subscribe", query="latest-metrics", params={"n": 4}) == refused
    # Joining a query the user already holds costs nothing: allowed, from any connection.
    assert (await same_user.ok("store.subscribe", query="latest-metrics", params={"n": 1}))["data"] == []
    assert (await same_user.request("store.subscribe", query="metric-count"))["code"] == "RATE_LIMITED"
    # Another user has a quota of its own.
    await admin.ok("store.subscribe", query="metric-count")
    # Ending the user's last subscription to a query frees its place.
    await viewer.ok("store.unsubscribe", subscriptionId=subs[1]["subscriptionId"])
    assert (await viewer.ok("store.subscribe", query="latest-metrics", params={"n": 4}))["data"] == []


async def test_distinct_live_queries_per_process(limits, connect):
    limits(MAX_LIVE_QUERIES=2)
    viewer = await connect("viewer-token")
    admin = await connect("admin-token")
    await viewer.ok("store.subscribe", query="metric-count")
    await viewer.ok("store.subscribe", query="metric-stats")
    assert await admin.request("store.subscribe", query="all-metrics") == {
        "id": 2,
        "type": "error",
        "code": "RATE_LIMITED",
        "message": "Live query limit reached (max 2 distinct queries per server process)",
    }
    # Joining a live query is always allowed.
    joined = await admin.ok("store.subscribe", query="metric-count")
    assert joined["data"] == 0 and joined["subscriptionId"].startswith("sub-")


# --- filters ---------------------------------------------------------------------------


def nested_and(depth: int) -> dict:
    spec: dict = {"name": "cpu"}
    for _ in range(depth):
        spec = {"$and": [spec]}
    return spec


@pytest.mark.parametrize(
    "spec, message",
    [
        (nested_and(330), "Filter too deep: at most 12 levels of nesting"),
        (nested_and(6), "Filter too deep: at most 12 levels of nesting"),
        ({"$or": [{"value": i} for i in range(1000)]}, "Filter too large: at most 1000 conditions and values"),
        ({"value": {"$in": list(range(100_000))}}, 'Filter too large: "$in" lists at most 500 values'),
        ({"name": {"$nin": ["x"] * 501}}, 'Filter too large: "$nin" lists at most 500 values'),
    ],
)
async def test_deep_or_wide_filters_are_validation_errors(connect, spec, message):
    admin = await connect("admin-token")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    for operation, fields in [("store.where", {}), ("store.count", {}), ("store.sum", {"field": "value"})]:
        reply = await admin.request(operation, bucket="metrics", filter=spec, **fields)
        assert {k: reply[k] for k in ("type", "code", "message")} == {
            "type": "error",
            "code": "VALIDATION_ERROR",
            "message": message,
        }
    assert await admin.ok("store.count", bucket="metrics", filter=nested_and(5)) == 1


async def test_only_small_filters_are_kept_compiled(limits, connect):
    limits(MAX_CACHED_FILTER_CHARS=100)
    admin = await connect("admin-token")
    before = selectors.compiled_filter_count()
    large = {"value": {"$in": list(range(400))}}
    assert await admin.ok("store.count", bucket="metrics", filter=large) == 0
    assert selectors.compiled_filter_count() == before
    assert await admin.ok("store.count", bucket="metrics", filter={"value": 1}) == 0
    assert selectors.compiled_filter_count() == before + 1


# --- connections that never log in ------------------------------------------------------


async def test_a_connection_that_does_not_log_in_in_time_is_closed(limits, connect):
    limits(LOGIN_DEADLINE_SECONDS=0.2)
    idle = await connect()
    logged_in = await connect("viewer-token")
    assert await idle.communicator.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4004,
        "reason": "login_timeout",
    }
    assert (await logged_in.ok("auth.whoami"))["authenticated"] is True


async def test_not_logged_in_connections_have_a_lower_cap_per_address(limits, connect):
    limits(MAX_UNAUTHENTICATED_PER_ADDRESS=2)
    first = await connect(address="10.9.8.7")
    await connect(address="10.9.8.7")
    refused = WebsocketCommunicator(application, "/ws/")
    refused.scope["client"] = ("10.9.8.7", 50000)
    assert (await refused.connect())[0]
    assert await refused.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4003,
        "reason": "too_many_connections",
    }
    # Another address is not affected, and a login frees a place.
    await connect("viewer-token", address="10.9.8.8")
    await first.login("viewer-token")
    again = await connect(address="10.9.8.7")
    assert again.welcome["type"] == "welcome"


# --- revocation that no signal announced ------------------------------------------------


async def until_closed(client) -> tuple[list[str], dict]:
    """The text frames a connection gets (pings included) until its close."""
    texts = []
    while True:
        output = await client.communicator.receive_output(timeout=3)
        if output["type"] == "websocket.close":
            return texts, output
        texts.append(output["text"])


async def test_a_token_revoked_without_a_signal_ends_its_sessions_within_a_heartbeat(limits, connect):
    limits(HEARTBEAT_SECONDS=0.2)
    user = await sync_to_async(get_user_model().objects.create)(username="carol")
    token, raw = await sync_to_async(token_create)(user=user, role="viewer")
    carol = await connect(raw)
    # QuerySet.update() sends no model signal, as a write from another process
    # without a shared channel layer reaches this one with none.
    await sync_to_async(ApiToken.objects.filter(pk=token.pk).update)(revoked=True)
    frames, close = await until_closed(carol)
    assert close == {"type": "websocket.close", "code": 4002, "reason": "session_revoked"}
    assert frames[-1] == '{"type":"system","event":"session_revoked","reason":"token revoked"}'


def delete_by_sql(pk: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {ApiToken._meta.db_table} WHERE id = %s", [pk])


async def test_the_check_ends_only_sessions_of_invalid_tokens(connect):
    user = await sync_to_async(get_user_model().objects.create)(username="erin")
    revoked, revoked_raw = await sync_to_async(token_create)(user=user, role="viewer")
    _kept, kept_raw = await sync_to_async(token_create)(user=user, role="viewer")
    gone, gone_raw = await sync_to_async(token_create)(user=user, role="viewer")
    clients = [await connect(raw) for raw in (revoked_raw, kept_raw, gone_raw)]
    await sync_to_async(ApiToken.objects.filter(pk=revoked.pk).update)(revoked=True)
    await sync_to_async(delete_by_sql)(gone.pk)  # as another process would, no signal here
    await get_hub().connections.recheck_sessions()
    assert await clients[0].receive() == {"type": "system", "event": "session_revoked", "reason": "token revoked"}
    assert await clients[2].receive() == {"type": "system", "event": "session_revoked", "reason": "token deleted"}
    assert (await clients[1].ok("auth.whoami"))["authenticated"] is True


async def test_deactivating_the_user_without_a_signal_ends_its_sessions(limits, connect):
    limits(HEARTBEAT_SECONDS=0.2)
    user = await sync_to_async(get_user_model().objects.create)(username="dave")
    _token, raw = await sync_to_async(token_create)(user=user, role="viewer")
    dave = await connect(raw)
    await sync_to_async(get_user_model().objects.filter(pk=user.pk).update)(is_active=False)
    texts, close = await until_closed(dave)
    assert close == {"type": "websocket.close", "code": 4002, "reason": "session_revoked"}
    assert texts[-1] == '{"type":"system","event":"session_revoked","reason":"user deactivated"}'


# --- outbox budgets ------------------------------------------------------------------------


class FakeOutbox:
    def __init__(self, ledger: OutboxLedger, user: str | None, progress_at: float) -> None:
        self.ledger, self.user, self.progress_at, self.queued = ledger, user, progress_at, 0
        self.closed = False

    def add(self, size: int) -> None:
        self.queued += size
        self.ledger.grew(self, size)

    def overflow(self) -> None:
        self.closed = True
        freed, self.queued = self.queued, 0
        self.ledger.grew(self, -freed)


def test_a_user_over_budget_loses_its_slowest_connections_first():
    ledger = OutboxLedger(per_user=100, total=1000)
    slow = FakeOutbox(ledger, "mallory", progress_at=1.0)
    slower = FakeOutbox(ledger, "mallory", progress_at=0.5)
    honest = FakeOutbox(ledger, "alice", progress_at=0.1)
    honest.add(90)
    slow.add(60)
    slower.add(30)
    assert (slow.closed, slower.closed, honest.closed) == (False, False, False)
    slow.add(20)  # mallory: 110 > 100: the one idle longest goes
    assert (slow.closed, slower.closed, honest.closed) == (False, True, False)
    assert (ledger.by_user["mallory"], ledger.by_user["alice"], ledger.total) == (80, 90, 170)


def test_the_process_budget_closes_the_slowest_of_all():
    ledger = OutboxLedger(per_user=0, total=100)
    a = FakeOutbox(ledger, "a", progress_at=3.0)
    b = FakeOutbox(ledger, "b", progress_at=2.0)
    c = FakeOutbox(ledger, None, progress_at=1.0)
    a.add(40)
    b.add(40)
    c.add(10)
    a.add(30)  # 120 > 100: c (oldest progress) goes, then b
    assert (a.closed, b.closed, c.closed) == (False, True, True)
    assert ledger.total == 70 and ledger.closed_for_budget == 2


def test_a_login_moves_queued_bytes_to_the_user():
    ledger = OutboxLedger(per_user=50, total=0)
    outbox = FakeOutbox(ledger, None, progress_at=0.0)
    outbox.add(60)
    assert not outbox.closed
    outbox.user = "mallory"
    ledger.moved(outbox, None)
    assert outbox.closed and ledger.total == 0


# --- pushes held back while logged out ----------------------------------------------------


async def test_a_login_after_logout_catches_up_with_the_latest_result(connect):
    """While no session may read a subscription its pushes are held back; the
    next login delivers the latest result (latest-state guarantee), once."""
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    sub = (await viewer.ok("store.subscribe", query="metric-count"))["subscriptionId"]
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    assert (await viewer.push_for(sub))["data"] == 1
    await viewer.ok("auth.logout")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 2))
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 3))
    assert await viewer.nothing()
    await viewer.login("viewer-token")
    assert await viewer.push_for(sub) == {"type": "push", "channel": "subscription", "subscriptionId": sub, "data": 3}
    assert await viewer.nothing()
    # Logging in again with nothing new sends nothing.
    await viewer.login("viewer-token")
    assert await viewer.nothing()
