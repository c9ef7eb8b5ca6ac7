"""One server on SQLite without Redis still pushes what other processes write
(a shell, `prune_metrics`): it watches SQLite's data_version."""

from __future__ import annotations

import pytest

from tests.servers import LiveServer, open_client, push_frame

pytestmark = pytest.mark.multiprocess

SHELL_INSERT = (
    "from metrics.models import Metric; "
    "Metric.objects.create(name='cpu', value=1, unit='%', timestamp=0); "
    "Metric.objects.create(name='cpu', value=2, unit='%', timestamp=9e15)"
)


@pytest.fixture
def server(tmp_path):
    server = LiveServer(tmp_path, DASHBOARD_EXTERNAL_WRITES_POLL_SECONDS="0.2", DASHBOARD_HEARTBEAT_SECONDS="3600")
    server.prepare()
    server.start()
    yield server
    server.stop()


async def test_writes_from_a_shell_and_a_prune_reach_subscribers(server):
    viewer = await open_client(server.url, "viewer", "viewer-token")
    subscription_id, initial = await viewer.subscribe("metric-count")
    assert initial == 0

    returncode, _, stderr = await server.manage_async("shell", "-c", SHELL_INSERT)
    assert returncode == 0, stderr
    # The two creates are two commits: the push carries one or both, the
    # last one always the final count.
    push = await viewer.push(10)
    if push["data"] == 1:
        push = await viewer.push(10)
    assert push == push_frame(subscription_id, 2)

    returncode, _, stderr = await server.manage_async("prune_metrics", "--older-than", "1d")
    assert returncode == 0, stderr
    assert await viewer.push(10) == push_frame(subscription_id, 1)

    # Nothing changed since: no push however long the watcher polls.
    assert await viewer.silent(1.0), viewer.pushes
    await viewer.close()
