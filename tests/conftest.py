"""Shared fixtures: protocol clients driving the real ASGI application."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.db import connections

from accounts.services import demo_tokens_seed
from dashboard_project.asgi import application
from metrics import models, records
from realtime import hub as hubs
from realtime.login_failures import login_failures

TIMEOUT = 5


class Client:
    """A protocol client over a WebsocketCommunicator: requests get ids, and
    pushes that arrive while waiting for a reply are kept in order."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.ids = itertools.count(1)
        self.pushes: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        await self.communicator.send_json_to(frame)

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self) -> dict[str, Any]:
        return await self.communicator.receive_json_from(timeout=TIMEOUT)

    async def reply_to(self, request_id: Any) -> dict[str, Any]:
        while True:
            frame = await self.receive()
            if frame.get("type") == "push":
                self.pushes.append(frame)
                continue
            assert frame.get("id") == request_id, frame
            return frame

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Sends a request and returns its whole reply frame."""
        request_id = next(self.ids)
        await self.send({"id": request_id, "type": type, **fields})
        return await self.reply_to(request_id)

    async def ok(self, type: str, **fields: Any) -> Any:
        """Sends a request that must succeed and returns its data."""
        reply = await self.request(type, **fields)
        assert reply["type"] == "result", reply
        return reply["data"]

    async def push(self) -> dict[str, Any]:
        if self.pushes:
            return self.pushes.pop(0)
        frame = await self.receive()
        assert frame.get("type") == "push", frame
        return frame

    async def push_for(self, subscription_id: str) -> dict[str, Any]:
        """The next push for one subscription; other pushes stay queued."""
        for i, frame in enumerate(self.pushes):
            if frame["subscriptionId"] == subscription_id:
                return self.pushes.pop(i)
        while True:
            frame = await self.receive()
            assert frame.get("type") == "push", frame
            if frame["subscriptionId"] == subscription_id:
                return frame
            self.pushes.append(frame)

    async def nothing(self, timeout: float = 0.3) -> bool:
        return not self.pushes and await self.communicator.receive_nothing(timeout=timeout)

    async def login(self, token: str) -> dict[str, Any]:
        return await self.ok("auth.login", token=token)


@pytest.fixture(scope="session", autouse=True)
def no_session_left_on_the_test_database(django_db_setup, django_db_blocker):
    """Threads other than the test's own (the database thread of Channels,
    Django's threads for sync views) keep their connections open
    (CONN_MAX_AGE), and PostgreSQL will not drop a database that has
    sessions: they are ended before the test database is dropped."""
    yield
    with django_db_blocker.unblock():
        connection = connections["default"]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each test runs on its own event loop: give it its own layer and hub."""
    channel_layers.backends = {}
    hubs.forget_all()
    records.clear_cache()
    login_failures.clear()
    yield
    channel_layers.backends = {}
    hubs.forget_all()


@pytest.fixture(autouse=True)
def demo_tokens(request):
    """Stores the seed's demo tokens (admin-token, viewer-token), as
    `manage.py seed_demo` does, for every test that uses the database, unless
    it is marked no_demo_tokens.

    A sync fixture, so it also serves sync tests and tests that run their own
    event loops; it asks for the database only when the test's django_db
    marker does (that marker decides transactional or not). Transactional
    tests flush the tables after each test, the others roll back: nothing
    seeded here outlives its test.
    """
    if request.node.get_closest_marker("django_db") is None or request.node.get_closest_marker("no_demo_tokens"):
        return
    request.getfixturevalue("db")
    demo_tokens_seed()


class Clock:
    """Stands in for the store's clock (metrics.models.now_ms), so record
    times and alert times are exact."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


CLOCK_START = 1_700_000_000_000


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(CLOCK_START)
    monkeypatch.setattr(models, "now_ms", fake)
    return fake


@pytest.fixture
def limits(settings):
    """Sets DASHBOARD settings for one test: limits(MAX_SUBSCRIPTIONS=3, ...)."""

    def set_limits(**values):
        settings.DASHBOARD = {**settings.DASHBOARD, **values}

    return set_limits


@pytest.fixture
async def connect():
    """Opens protocol clients (after the welcome frame); always disconnects them."""
    opened: list[WebsocketCommunicator] = []

    async def open_client(token: str | None = None, path: str = "/ws/", address: str | None = None) -> Client:
        communicator = WebsocketCommunicator(application, path)
        if address is not None:
            communicator.scope["client"] = (address, 50000)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        opened.append(communicator)
        client = Client(communicator)
        client.welcome = await client.receive()
        if token is not None:
            await client.login(token)
        return client

    yield open_client
    for communicator in opened:
        await communicator.disconnect(timeout=TIMEOUT)
    await hubs.stop_all()
    # The database thread keeps its connection open (CONN_MAX_AGE); close it
    # so the test database can be dropped at the end.
    await database_sync_to_async(connections.close_all)()


def metric(name: str = "cpu", value: float = 72.5, unit: str = "%", timestamp: int = 1706745600000) -> dict:
    return {"name": name, "value": value, "unit": unit, "timestamp": timestamp}
