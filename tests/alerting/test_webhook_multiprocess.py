"""The alert webhook with two uvicorn server processes on PostgreSQL and
Redis, and a real local HTTP receiver that refuses the first attempts and is
later down for a while: every transition is delivered exactly once, in order,
after the receiver recovers and after the sending server crashed and was
restarted; the lease is released once the queue is drained (fixtures: tests/servers.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.alerting.receiver import Receiver
from tests.servers import cluster_env, make_server

pytestmark = pytest.mark.multiprocess

ALERT = {"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high"}


def transitions(database: Any) -> list[tuple]:
    return database.query(
        "SELECT id, from_state, to_state, value, at, pending, delivered_at IS NOT NULL, attempts "
        "FROM alerting_alerttransition ORDER BY id"
    )


def lease_pid(database: Any) -> int:
    [(holder,)] = database.query("SELECT holder FROM alerting_webhooklease")
    return int(holder.split(":")[1])


async def test_each_transition_delivered_once_in_order_across_refusals_and_a_restart(
    database, redis_url, tmp_path, ws_connect
):
    with Receiver(refuse_first=4) as receiver:
        env = {
            **cluster_env(database.url, redis_url),
            "DASHBOARD_ALERT_WEBHOOK_URL": receiver.url,
            "DASHBOARD_ALERT_WEBHOOK_TIMEOUT_SECONDS": "0.5",
            "DASHBOARD_ALERT_WEBHOOK_BACKOFF_SECONDS": "0.1",
            "DASHBOARD_ALERT_WEBHOOK_BACKOFF_MAX_SECONDS": "0.4",
            "DASHBOARD_ALERT_WEBHOOK_POLL_SECONDS": "0.2",
            "DASHBOARD_ALERT_WEBHOOK_LEASE_SECONDS": "2",
        }
        a, b = make_server("A", env, tmp_path), make_server("B", env, tmp_path)
        servers = {"A": a, "B": b}
        a.start()
        b.start()
        try:
            admin_a = await ws_connect(a, "admin-token")
            admin_b = await ws_connect(b, "admin-token")
            viewer_b = await ws_connect(b, "viewer-token")
            await admin_a.ok("store.insert", bucket="alerts", data={**ALERT, "timestamp": 1})
            sub, initial = await viewer_b.subscribe("alert-status")
            assert [entry["state"] for entry in initial] == ["no-data"]

            async def reading(admin: Any, value: float) -> None:
                await admin.ok("store.insert", bucket="metrics", data={"name": "cpu", "value": value, "timestamp": 1})

            # Writes on both servers: no-data->ok, ok->firing, firing->ok.
            await reading(admin_a, 10)
            await reading(admin_b, 90)
            await reading(admin_a, 20)
            # A change written on A reaches B's viewer (latest state: the last push is "ok").
            for _ in range(3):
                pushed = await viewer_b.push()
                if pushed["data"][0]["state"] == "ok" and pushed["data"][0]["value"] == 20:
                    break
            else:
                raise AssertionError(f"B's viewer never saw the last state: {pushed}")
            assert pushed["subscriptionId"] == sub
            await asyncio.to_thread(receiver.wait_for, 3, 20)
            assert len(receiver.attempts) == 4 + 3  # four refusals of the first, then each once

            # The sender crashes; the receiver is down while more transitions happen.
            holder = next(name for name, s in servers.items() if s.pid == lease_pid(database))
            other = "B" if holder == "A" else "A"
            servers[holder].kill()
            receiver.refusing = True
            survivor = admin_b if other == "B" else admin_a
            await reading(survivor, 95)  # ok->firing
            await reading(survivor, 5)  # firing->ok
            await asyncio.to_thread(_wait_for_attempt, receiver, 7 + 1, 20)  # the survivor took over and failed
            servers[holder].start()
            receiver.refusing = False
            await asyncio.to_thread(receiver.wait_for, 5, 30)
            await asyncio.sleep(1.0)  # anything sent twice would arrive by now
        finally:
            a.stop()
            b.stop()

    # The queue drained, the last holder released the lease: no stop leaves one behind.
    assert database.query("SELECT expires_at FROM alerting_webhooklease") == [(0,)]
    rows = transitions(database)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("no-data", "ok", 10.0),
        ("ok", "firing", 90.0),
        ("firing", "ok", 20.0),
        ("ok", "firing", 95.0),
        ("firing", "ok", 5.0),
    ]
    assert all(r[5] is False and r[6] is True for r in rows), rows  # none pending, all delivered
    assert receiver.ids == [r[0] for r in rows]  # exactly once each, in order
    assert receiver.accepted == [
        {"alert": ALERT, "from": r[1], "to": r[2], "value": int(r[3]), "at": r[4]} for r in rows
    ]


def _wait_for_attempt(receiver: Receiver, attempts: int, timeout: float) -> None:
    with receiver.changed:
        assert receiver.changed.wait_for(lambda: len(receiver.attempts) >= attempts, timeout), receiver.attempts
