"""POST /v1/metrics: OTLP/HTTP in protobuf and JSON, the mapping to readings
and every error path."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from ingest import otlp
from tests.ingest.conftest import json_body
from tests.ingest.helpers import stored

pytestmark = pytest.mark.django_db

URL = "/v1/metrics"
PROTOBUF = "application/x-protobuf"
T = 1_700_000_000_123_456_789
MS = 1_700_000_000_123


def attrs(**values) -> list[KeyValue]:
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        elif isinstance(value, list):
            any_value = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
        else:
            any_value = AnyValue(string_value=value)
        out.append(KeyValue(key=key.replace("_", "."), value=any_value))
    return out


def export(*metrics: pb.Metric, **resource: Any) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(
        resource_metrics=[
            pb.ResourceMetrics(
                resource=Resource(attributes=attrs(**resource)),
                scope_metrics=[pb.ScopeMetrics(metrics=list(metrics))],
            )
        ]
    )


def every_kind() -> ExportMetricsServiceRequest:
    return export(
        pb.Metric(
            name="temperature",
            unit="Cel",
            gauge=pb.Gauge(
                data_points=[pb.NumberDataPoint(time_unix_nano=T, as_double=21.5, attributes=attrs(room="a"))]
            ),
        ),
        pb.Metric(
            name="requests",
            unit="1",
            sum=pb.Sum(
                is_monotonic=True,
                aggregation_temporality=pb.AGGREGATION_TEMPORALITY_CUMULATIVE,
                data_points=[
                    pb.NumberDataPoint(time_unix_nano=T, as_int=7, attributes=attrs(code=200, ok=True)),
                    pb.NumberDataPoint(time_unix_nano=T, flags=1),  # no recorded value: skipped
                ],
            ),
        ),
        pb.Metric(
            name="latency",
            unit="ms",
            histogram=pb.Histogram(
                data_points=[
                    pb.HistogramDataPoint(time_unix_nano=T, count=4, sum=10.0, min=1.0, max=4.0, bucket_counts=[4])
                ]
            ),
        ),
        pb.Metric(
            name="size",
            unit="By",
            exponential_histogram=pb.ExponentialHistogram(
                data_points=[pb.ExponentialHistogramDataPoint(time_unix_nano=T, count=2, sum=3.0)]
            ),
        ),
        pb.Metric(
            name="gc",
            unit="s",
            summary=pb.Summary(data_points=[pb.SummaryDataPoint(time_unix_nano=T, count=3, sum=0.75)]),
        ),
        service_name="api",
        telemetry_sdk_name="opentelemetry",
        telemetry_sdk_version="1.45.2",
        service_instance_id="5f1c0d5e-0000-4000-8000-000000000000",
        host_tags=["x", "y"],
    )


EVERY_KIND_STORED = [
    ("temperature{host.tags=[x\\,y],room=a,service.name=api}", 21.5, "Cel", MS),
    ("requests{code=200,host.tags=[x\\,y],ok=true,service.name=api}", 7, "1", MS),
    ("latency.count{host.tags=[x\\,y],service.name=api}", 4, "", MS),
    ("latency.sum{host.tags=[x\\,y],service.name=api}", 10, "ms", MS),
    ("latency.min{host.tags=[x\\,y],service.name=api}", 1, "ms", MS),
    ("latency.max{host.tags=[x\\,y],service.name=api}", 4, "ms", MS),
    ("size.count{host.tags=[x\\,y],service.name=api}", 2, "", MS),
    ("size.sum{host.tags=[x\\,y],service.name=api}", 3, "By", MS),
    ("gc.count{host.tags=[x\\,y],service.name=api}", 3, "", MS),
    ("gc.sum{host.tags=[x\\,y],service.name=api}", 0.75, "s", MS),
]


def test_protobuf_every_kind_of_metric(http):
    response = http.post(URL, every_kind().SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 200
    assert response["Content-Type"] == PROTOBUF
    assert response.content == ExportMetricsServiceResponse().SerializeToString()
    assert stored() == EVERY_KIND_STORED


def test_json_by_hand(http):
    body = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "web"}}]},
                "scopeMetrics": [
                    {
                        "scope": {"name": "manual"},
                        "metrics": [
                            {
                                "name": "queue.depth",
                                "unit": "{item}",
                                "gauge": {
                                    "dataPoints": [
                                        {
                                            "timeUnixNano": str(T),
                                            "asInt": "12",
                                            "attributes": [{"key": "queue", "value": {"stringValue": "mail"}}],
                                            "exemplars": [
                                                {"traceId": "5b8efff798038103d269b633813fc60c", "asInt": "1"}
                                            ],
                                        }
                                    ]
                                },
                            },
                            {
                                "name": "cpu",
                                "sum": {"dataPoints": [{"timeUnixNano": T, "asDouble": 0.5}], "isMonotonic": False},
                            },
                        ],
                    }
                ],
            }
        ]
    }
    response = http.post(URL, json.dumps(body), content_type="application/json")
    assert (response.status_code, response["Content-Type"], response.content) == (200, "application/json", b"{}")
    assert stored() == [
        ("queue.depth{queue=mail,service.name=web}", 12, "{item}", MS),
        ("cpu{service.name=web}", 0.5, "", MS),
    ]


def test_an_empty_export_stores_nothing(http):
    assert http.post(URL, b"", content_type=PROTOBUF).status_code == 200
    assert http.post(URL, "{}", content_type="application/json").status_code == 200
    assert stored() == []


def test_a_point_without_time_gets_the_servers(http):
    before = int(time.time() * 1000)
    request = export(pb.Metric(name="up", gauge=pb.Gauge(data_points=[pb.NumberDataPoint(as_int=1)])))
    assert http.post(URL, request.SerializeToString(), content_type=PROTOBUF).status_code == 200
    [(name, value, unit, stamp)] = stored()
    assert (name, value, unit) == ("up", 1, "")
    assert before <= stamp <= int(time.time() * 1000)


def status(response) -> tuple[int, str]:
    assert response["Content-Type"] == PROTOBUF
    message = status_pb2.Status.FromString(response.content)
    return message.code, message.message


def test_protobuf_errors_are_a_status(http):
    response = http.post(URL, b"\xff\xff\xff", content_type=PROTOBUF)
    assert response.status_code == 400
    assert status(response) == (code_pb2.INVALID_ARGUMENT, "VALIDATION_ERROR: Invalid OTLP protobuf body")

    response = http.post(URL, every_kind().SerializeToString(), content_type=PROTOBUF, token=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="dashboard"'
    assert status(response) == (code_pb2.UNAUTHENTICATED, "UNAUTHORIZED: Authentication required")

    response = http.post(URL, every_kind().SerializeToString(), content_type=PROTOBUF, token="viewer-token")
    assert response.status_code == 403
    assert status(response) == (code_pb2.PERMISSION_DENIED, "FORBIDDEN: No permission for store.insert on metrics")
    assert stored() == []


def test_a_metric_without_a_name_is_named(http):
    request = export(
        pb.Metric(name="fine", gauge=pb.Gauge(data_points=[pb.NumberDataPoint(as_int=1)])),
        pb.Metric(gauge=pb.Gauge(data_points=[pb.NumberDataPoint(as_int=1)])),
    )
    response = http.post(URL, request.SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 400
    assert status(response) == (
        code_pb2.INVALID_ARGUMENT,
        'VALIDATION_ERROR: resourceMetrics[0].scopeMetrics[0].metrics[1]: missing "name"',
    )
    assert stored() == []


def test_a_value_that_is_not_finite_is_named_with_its_data_point(http):
    request = export(
        pb.Metric(
            name="ratio",
            gauge=pb.Gauge(data_points=[pb.NumberDataPoint(as_double=1.0), pb.NumberDataPoint(as_double=float("inf"))]),
        )
    )
    response = http.post(URL, json.dumps(_json_of(request)), content_type="application/json")
    assert response.status_code == 400
    assert json_body(response) == {
        "code": "VALIDATION_ERROR",
        "message": 'resourceMetrics[0].scopeMetrics[0].metrics[0].dataPoints[1] ("ratio"): '
        'Validation failed for bucket "metrics": value: Expected a finite number',
        "details": {
            "field": "resourceMetrics[0].scopeMetrics[0].metrics[0].dataPoints[1]",
            "issues": [{"field": "value", "message": "Expected a finite number", "code": "type"}],
        },
    }
    assert stored() == []


def _json_of(request: ExportMetricsServiceRequest) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(request)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "Invalid OTLP JSON body: not JSON"),
        (b"[]", "Invalid OTLP JSON body: expected an object"),
        (
            b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "x", "gauge": {"dataPoints": [{"asDouble": "many"}]}}]}]}]}',
            "Invalid OTLP JSON body: Couldn't parse float: many at "
            "ExportMetricsServiceRequest.resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].asDouble",
        ),
    ],
)
def test_malformed_json_is_400_naming_the_field(http, body, message):
    response = http.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": message}
    assert stored() == []


def test_content_type_method_size_and_rate(http, limits):
    response = http.post(URL, b"x", content_type="text/plain")
    assert response.status_code == 415
    assert json_body(response)["message"] == (
        'Unsupported Content-Type "text/plain": expected application/x-protobuf, application/json'
    )
    assert http.client.get(URL, HTTP_AUTHORIZATION="Bearer admin-token").status_code == 405

    limits(MAX_TRANSACTION_OPERATIONS=9)
    response = http.post(URL, every_kind().SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 413
    assert status(response) == (
        code_pb2.RESOURCE_EXHAUSTED,
        "VALIDATION_ERROR: Too many readings: at most 9 per request",
    )

    limits(MAX_TRANSACTION_OPERATIONS=1000, MAX_FRAME_BYTES=50, REQUEST_RATE=1, REQUEST_RATE_WINDOW_SECONDS=5)
    response = http.post(URL, every_kind().SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 413
    assert status(response) == (
        code_pb2.RESOURCE_EXHAUSTED,
        "VALIDATION_ERROR: Request body too large: at most 50 bytes",
    )
    response = http.post(URL, b"", content_type=PROTOBUF)
    assert (response.status_code, response["Retry-After"]) == (429, "5")
    assert status(response)[0] == code_pb2.RESOURCE_EXHAUSTED
    assert stored() == []


@pytest.mark.django_db(transaction=True)
async def test_an_export_is_one_push_to_a_subscribed_viewer(connect, http):
    viewer = await connect("viewer-token")
    stats = await viewer.ok("store.subscribe", query="metric-stats")
    assert stats["data"] == []
    response = await sync_to_async(http.post)(URL, every_kind().SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 200
    push = await viewer.push()
    assert push["subscriptionId"] == stats["subscriptionId"]
    assert sorted((row["name"], row["count"], row["last"], row["unit"]) for row in push["data"]) == sorted(
        (name, 1, value, unit) for name, value, unit, _ in EVERY_KIND_STORED
    )
    assert await viewer.nothing()


# --- the readings limit, counted while parsing (a few hundred KB of tiny data points) ---------


TOO_MANY = "Too many readings: at most 1000 per request"


def names_built(monkeypatch) -> mock.Mock:
    """Counts the reading names built, the first step of building a reading."""
    counter = mock.Mock(wraps=otlp.series_name)
    monkeypatch.setattr(otlp, "series_name", counter)
    return counter


def test_a_metric_of_more_points_than_the_limit_is_refused_before_any_is_read(http, monkeypatch):
    # 200,000 empty histogram points (each one reading, `.count`) in 400 KB.
    request = export(pb.Metric(name="h", histogram=pb.Histogram(data_points=[pb.HistogramDataPoint()] * 200_000)))
    body = request.SerializeToString()
    assert 300_000 < len(body) < 1_048_576
    names = names_built(monkeypatch)
    response = http.post(URL, body, content_type=PROTOBUF)
    assert response.status_code == 413
    assert status(response) == (code_pb2.RESOURCE_EXHAUSTED, f"VALIDATION_ERROR: {TOO_MANY}")
    assert names.call_count == 0
    assert stored() == []


def test_points_without_a_value_count_too(http):
    # Gauge points with no value give no reading, but each costs a message.
    request = export(pb.Metric(name="g", gauge=pb.Gauge(data_points=[pb.NumberDataPoint()] * 150_000)))
    response = http.post(URL, request.SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 413
    assert status(response) == (code_pb2.RESOURCE_EXHAUSTED, f"VALIDATION_ERROR: {TOO_MANY}")
    assert stored() == []


def test_the_reading_past_the_limit_stops_the_parse(http, monkeypatch):
    # 300 points (under the limit), four readings each: refused at reading 1,001.
    point = pb.HistogramDataPoint(count=1, sum=1.0, min=1.0, max=1.0)
    request = export(pb.Metric(name="h", histogram=pb.Histogram(data_points=[point] * 300)))
    names = names_built(monkeypatch)
    response = http.post(URL, request.SerializeToString(), content_type=PROTOBUF)
    assert response.status_code == 413
    assert status(response) == (code_pb2.RESOURCE_EXHAUSTED, f"VALIDATION_ERROR: {TOO_MANY}")
    assert names.call_count == 1001
    assert stored() == []


def gauge_json(key: str, points: list[dict]) -> bytes:
    metric = {"name": "x", "gauge": {key: points}}
    return json.dumps({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]}).encode()


@pytest.mark.parametrize(("key", "point"), [("dataPoints", {}), ("data_points", {"asInt": "1"})])
def test_json_points_are_counted_before_the_json_parser_builds_them(http, monkeypatch, key, point):
    body = gauge_json(key, [point] * 60_000)
    assert 100_000 < len(body) < 1_048_576
    parser = mock.Mock(wraps=json_format.ParseDict)
    monkeypatch.setattr(json_format, "ParseDict", parser)
    response = http.post(URL, body, content_type="application/json")
    assert response.status_code == 413
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": TOO_MANY}
    assert parser.call_count == 0
    assert stored() == []


def test_json_points_up_to_the_limit_are_accepted(http, limits):
    limits(MAX_TRANSACTION_OPERATIONS=5)
    response = http.post(URL, gauge_json("dataPoints", [{"asInt": "2"}] * 5), content_type="application/json")
    assert (response.status_code, response.content) == (200, b"{}")
    assert [(name, value) for name, value, _, _ in stored()] == [("x", 2)] * 5
    response = http.post(URL, gauge_json("dataPoints", [{}] * 6), content_type="application/json")
    assert response.status_code == 413
    assert json_body(response) == {"code": "VALIDATION_ERROR", "message": "Too many readings: at most 5 per request"}


def test_every_kind_of_metric_has_an_explicit_accessor():
    # No getattr on the oneof's name (it comes from the client's message):
    # the map names every member the official messages define.
    members = {field.name for field in pb.Metric.DESCRIPTOR.oneofs_by_name["data"].fields}
    assert set(otlp.POINTS) == members
