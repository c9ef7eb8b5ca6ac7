"""The ingest endpoints with the real clients they are for, against a live
server (uvicorn, SQLite): the official influxdb-client, the OpenTelemetry SDK
with its OTLP/HTTP exporter, and a hand-written OTLP/JSON request. Each batch
reaches a viewer subscribed over a real WebSocket as one push."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.servers import Client, open_client, push_frame

T_MS = 1_700_000_000_123


@pytest.fixture
async def viewer(server):
    client = await open_client(server.url, "viewer", "viewer-token")
    yield client
    await client.close()


async def readings_named(client: Client, prefix: str) -> list[tuple[str, float, str, float]]:
    records = await client.ok("store.where", bucket="metrics", filter={"name": {"$startsWith": prefix}})
    return [(r["name"], r["value"], r["unit"], r["timestamp"]) for r in records]


async def count_push(viewer: Client) -> tuple[str, int]:
    subscription_id, count = await viewer.subscribe("metric-count")
    return subscription_id, count


def influx_write(url: str, token: str, records: Any, **options: Any) -> None:
    with InfluxDBClient(url=url, token=token, org="acme", **options) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="dash", record=records, write_precision=WritePrecision.MS
        )


async def test_influxdb_client_writes_one_batch(server, viewer):
    subscription_id, before = await count_push(viewer)
    points = [
        Point("influx_cpu")
        .tag("host", "a")
        .tag("dc", "west")
        .field("usage", 72.5)
        .field("cores", 8)
        .time(T_MS, WritePrecision.MS),
        Point("influx_cpu")
        .tag("host", "b")
        .field("usage", 10.25)
        .field("state", "ok")
        .time(T_MS + 1, WritePrecision.MS),
    ]
    await asyncio.to_thread(influx_write, server.http, "admin-token", points, enable_gzip=True)
    assert await viewer.push() == push_frame(subscription_id, before + 3)
    assert await viewer.silent(), viewer.pushes
    assert sorted(await readings_named(viewer, "influx_cpu")) == [
        ("influx_cpu.cores{dc=west,host=a}", 8, "", T_MS),
        ("influx_cpu.usage{dc=west,host=a}", 72.5, "", T_MS),
        ("influx_cpu.usage{host=b}", 10.25, "", T_MS + 1),
    ]


async def test_influxdb_client_sees_the_errors(server, viewer):
    await count_push(viewer)
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(influx_write, server.http, "admin-token", "influx_bad v=1 1\ninflux_bad v= 2")
    assert refused.value.status == 400
    assert json.loads(refused.value.body) == {
        "code": "VALIDATION_ERROR",
        "message": "Line 2: Failed to parse value of field",
        "details": {"line": 2, "text": "influx_bad v= 2"},
    }
    with pytest.raises(ApiException) as forbidden:
        await asyncio.to_thread(influx_write, server.http, "viewer-token", "influx_bad v=1 1")
    assert forbidden.value.status == 403
    assert await viewer.silent(), viewer.pushes
    assert await readings_named(viewer, "influx_bad") == []


def otel_export(url: str, token: str) -> MeterProvider:
    """Records a counter, a histogram and a gauge and flushes them: one export,
    one request. The provider is returned running (its shutdown exports again)."""
    exporter = OTLPMetricExporter(endpoint=f"{url}/v1/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(resource=Resource.create({"service.name": "checkout"}), metric_readers=[reader])
    meter = provider.get_meter("tests.ingest")
    meter.create_counter("otel.orders", unit="1").add(3, {"region": "eu"})
    latency = meter.create_histogram("otel.latency", unit="ms")
    latency.record(5)
    latency.record(15)
    meter.create_gauge("otel.temperature", unit="Cel").set(21.5)
    assert provider.force_flush(5_000)  # done, whether or not the server took it
    return provider


def export_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the exporter logged about exports the server refused."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry.exporter")]


async def test_opentelemetry_sdk_exports_one_batch(server, viewer, caplog):
    subscription_id, before = await count_push(viewer)
    provider = await asyncio.to_thread(otel_export, server.http, "admin-token")
    try:
        assert export_failures(caplog) == []
        assert await viewer.push() == push_frame(subscription_id, before + 6)
        assert await viewer.silent(), viewer.pushes
        got = await readings_named(viewer, "otel.")
        assert sorted((name, value, unit) for name, value, unit, _ in got) == [
            ("otel.latency.count{service.name=checkout}", 2, ""),
            ("otel.latency.max{service.name=checkout}", 15, "ms"),
            ("otel.latency.min{service.name=checkout}", 5, "ms"),
            ("otel.latency.sum{service.name=checkout}", 20, "ms"),
            ("otel.orders{region=eu,service.name=checkout}", 3, "1"),
            ("otel.temperature{service.name=checkout}", 21.5, "Cel"),
        ]
    finally:
        # The reader's last collection on shutdown is a second export: a
        # second batch (cumulative: the same figures again), a second push.
        await asyncio.to_thread(provider.shutdown)
    assert await viewer.push() == push_frame(subscription_id, before + 12)
    assert await viewer.silent(), viewer.pushes
    assert export_failures(caplog) == []


async def test_opentelemetry_sdk_refused_for_a_viewer(server, viewer, caplog):
    await count_push(viewer)
    provider = await asyncio.to_thread(otel_export, server.http, "viewer-token")
    await asyncio.to_thread(provider.shutdown)
    # 403 is not retried: the flush and the shutdown's export, refused once each.
    assert export_failures(caplog) == ["Failed to export metrics batch code: 403, reason: Forbidden"] * 2
    assert await viewer.silent(), viewer.pushes


def post(url: str, body: bytes, content_type: str, token: str = "admin-token") -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        url, body, method="POST", headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


async def test_otlp_json_by_hand(server, viewer):
    subscription_id, before = await count_push(viewer)
    body = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "web-1"}}]},
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "json.queue",
                                "unit": "{item}",
                                "gauge": {"dataPoints": [{"timeUnixNano": str(T_MS * 1_000_000), "asInt": "4"}]},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    answer = await asyncio.to_thread(post, f"{server.http}/v1/metrics", json.dumps(body).encode(), "application/json")
    assert answer == (200, "application/json", b"{}")
    assert await viewer.push() == push_frame(subscription_id, before + 1)
    assert await readings_named(viewer, "json.") == [("json.queue{host.name=web-1}", 4, "{item}", T_MS)]


async def test_json_readings_over_http(server, viewer):
    subscription_id, before = await count_push(viewer)
    body = [
        {"name": "http.a", "value": 1, "timestamp": T_MS},
        {"name": "http.b", "value": 2, "unit": "s", "timestamp": T_MS},
    ]
    status, content_type, content = await asyncio.to_thread(
        post, f"{server.http}/api/metrics", json.dumps(body).encode(), "application/json"
    )
    assert (status, content_type) == (201, "application/json")
    records = await viewer.ok("store.where", bucket="metrics", filter={"name": {"$startsWith": "http."}})
    assert json.loads(content) == records
    assert await viewer.push() == push_frame(subscription_id, before + 2)
