"""A batch sent over HTTP to one server process reaches a viewer on another
(PostgreSQL, Redis pub/sub layer) as one push per subscription."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.servers import push_frame

pytestmark = pytest.mark.multiprocess


def post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(
        url, body, method="POST", headers={"Content-Type": content_type, "Authorization": "Bearer admin-token"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


@pytest.fixture
def servers(cluster):
    cluster.ensure_running()
    return cluster


async def test_a_batch_on_one_process_is_one_push_on_the_other(servers, ws_connect):
    viewer_b = await ws_connect(servers.b, "viewer-token")
    count_b, count0 = await viewer_b.subscribe("metric-count")
    name_b, readings0 = await viewer_b.subscribe("metrics-by-name", {"name": "mp.cpu.usage{host=a}"})
    assert readings0 == []

    lines = "\n".join(f"mp.cpu,host=a usage={i}.5,idle={i}i {1_700_000_000 + i}" for i in range(50)).encode()
    status = await asyncio.to_thread(post, f"{servers.a.http}/api/v2/write?precision=s", lines, "text/plain")
    assert status == 204
    pushes = await viewer_b.pushes_by_subscription(2)
    assert pushes[count_b] == push_frame(count_b, count0 + 100)
    assert [(r["value"], r["timestamp"]) for r in pushes[name_b]["data"]] == [
        (i + 0.5, (1_700_000_000 + i) * 1000) for i in range(50)
    ]
    assert await viewer_b.silent(), viewer_b.pushes

    viewer_a = await ws_connect(servers.a, "viewer-token")
    count_a, count1 = await viewer_a.subscribe("metric-count")
    assert count1 == count0 + 100
    body = json.dumps([{"name": "mp.json", "value": i, "timestamp": i} for i in range(10)]).encode()
    assert await asyncio.to_thread(post, f"{servers.b.http}/api/metrics", body, "application/json") == 201
    assert await viewer_a.push() == push_frame(count_a, count1 + 10)
    assert await viewer_a.silent(), viewer_a.pushes
