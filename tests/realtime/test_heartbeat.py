"""Heartbeat: pings every interval, pongs keep the connection, silence closes it."""

from __future__ import annotations

import pytest

from realtime.hub import get_hub

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast_heartbeat(settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "HEARTBEAT_SECONDS": 0.2}


async def test_ping_answered_by_pong_keeps_connection(fast_heartbeat, connect):
    client = await connect("viewer-token")
    for _ in range(3):
        ping = await client.receive()
        assert set(ping) == {"type", "timestamp"} and ping["type"] == "ping"
        assert isinstance(ping["timestamp"], int)
        await client.send({"type": "pong", "timestamp": ping["timestamp"]})
    assert await client.ok("auth.whoami") == {
        "authenticated": True,
        "userId": "viewer-1",
        "roles": ["viewer"],
        "expiresAt": None,
    }


async def test_unanswered_ping_closes_with_4001_and_releases_subscriptions(fast_heartbeat, connect):
    client = await connect("viewer-token")
    await client.ok("store.subscribe", query="metric-count")
    hub = get_hub()
    assert len(hub.queries.live) == 1 and len(hub.connections) == 1
    ping = await client.receive()
    assert ping["type"] == "ping"
    closed = await client.communicator.receive_output(timeout=2)
    assert closed == {"type": "websocket.close", "code": 4001, "reason": "heartbeat_timeout"}
    assert hub.queries.live == {} and len(hub.connections) == 0
