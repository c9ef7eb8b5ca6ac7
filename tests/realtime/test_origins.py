"""Browser connections must come from an allowed host; other clients send no Origin."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from dashboard_project.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "headers, accepted",
    [
        ([], True),  # scripts and collectors send no Origin
        ([(b"origin", b"http://localhost:8000")], True),
        ([(b"origin", b"http://127.0.0.1")], True),
        ([(b"origin", b"https://evil.example")], False),
        ([(b"origin", b"null")], False),
    ],
)
async def test_origin_checked_for_browsers(headers, accepted):
    communicator = WebsocketCommunicator(application, "/ws/", headers=headers)
    connected, _ = await communicator.connect()
    try:
        assert connected is accepted
        if accepted:
            welcome = await communicator.receive_json_from()
            assert welcome["type"] == "welcome"
    finally:
        await communicator.disconnect()
