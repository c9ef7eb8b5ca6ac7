"""Revocation reaches every server process: a token issued and revoked by
management processes ends its sessions on two uvicorn servers that share
PostgreSQL and Redis (fixtures: tests/servers.py)."""

from __future__ import annotations

import re

import pytest
from websockets.exceptions import ConnectionClosed

from tests.servers import TIMEOUT, Client, manage

pytest_plugins = ["tests.servers"]

pytestmark = pytest.mark.multiprocess


async def assert_revoked(client: Client, reason: str) -> None:
    assert await client.receive() == {"type": "system", "event": "session_revoked", "reason": reason}
    with pytest.raises(ConnectionClosed):
        await client.receive(TIMEOUT)
    assert (client.ws.close_code, client.ws.close_reason) == (4002, "session_revoked")


async def test_revoking_in_a_shell_ends_sessions_on_both_servers(cluster, ws_connect):
    cluster.ensure_running()
    output = await manage(cluster.env, "create_token", "--user", "mp-alice", "--role", "viewer", "--create-user")
    [raw] = re.findall(r"^[A-Za-z0-9_-]{43}$", output, re.M)
    on_a = await ws_connect(cluster.a, raw, name="alice@A")
    on_b = await ws_connect(cluster.b, raw, name="alice@B")
    bystander = await ws_connect(cluster.b, "viewer-token")
    assert (await on_b.ok("auth.whoami"))["userId"] == "mp-alice"

    await manage(
        cluster.env,
        "shell",
        "-c",
        "from accounts.models import ApiToken; from accounts.services import token_revoke; "
        "token_revoke(token=ApiToken.objects.get(user__username='mp-alice'))",
    )
    await assert_revoked(on_a, "token revoked")
    await assert_revoked(on_b, "token revoked")
    assert (await bystander.ok("auth.whoami"))["userId"] == "viewer-1"
    again = await ws_connect(cluster.a)
    assert await again.request("auth.login", token=raw) == {
        "id": 1,
        "type": "error",
        "code": "UNAUTHORIZED",
        "message": "Invalid token",
    }
