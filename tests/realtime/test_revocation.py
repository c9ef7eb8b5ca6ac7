"""Revoking a token ends the live sessions opened with it (system frame, 4002)."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from realtime.auth import Session, sessions_revoked
from realtime.hub import get_hub

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = {
    "token-a": Session(user_id="alice", roles=("viewer",), token_id="1"),
    "token-b": Session(user_id="bob", roles=("viewer",), token_id="2"),
}


def validate(token: str) -> Session | None:
    return SESSIONS.get(token)


@pytest.fixture
def tokens(settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "TOKEN_VALIDATOR": "tests.realtime.test_revocation.validate"}


async def test_revocation_closes_only_matching_sessions(tokens, connect):
    alice = await connect("token-a")
    bob = await connect("token-b")
    await alice.ok("store.subscribe", query="metric-count")
    hub = get_hub()
    # From a worker thread, as a model signal or management command would.
    await sync_to_async(sessions_revoked.send)(sender=None, token_ids=["1"], reason="token revoked")
    assert await alice.receive() == {"type": "system", "event": "session_revoked", "reason": "token revoked"}
    assert await alice.communicator.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4002,
        "reason": "session_revoked",
    }
    assert hub.queries.live == {}
    assert await bob.ok("auth.whoami") == {
        "authenticated": True,
        "userId": "bob",
        "roles": ["viewer"],
        "expiresAt": None,
    }
