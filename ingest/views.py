"""The ingest endpoints: plain Django views, token-authenticated (so exempt
from CSRF, which guards cookie sessions), each batch one transaction.

Every request is checked in this order: method (405), token (401), permission
(403), request rate (429), content type (415), size (413), body (400), then
the batch is stored (400/409 naming the reading at fault, nothing written).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from realtime.errors import INTERNAL_ERROR, INVALID_REQUEST
from realtime.frames import dumps, encode
from telemetry import instruments

from . import json_readings, line_protocol, otlp
from .auth import writer_session
from .body import body_of, content_type_of
from .errors import HttpError
from .rate import check_rate
from .readings import store

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/json",)
# What InfluxDB clients and Telegraf send; "" is a request without the header.
LINE_PROTOCOL_TYPES = ("text/plain", "application/octet-stream", "")
OTLP_TYPES = (otlp.PROTOBUF, otlp.JSON)

ErrorRenderer = Callable[[HttpRequest, HttpError], HttpResponse]


def json_error(request: HttpRequest, error: HttpError) -> HttpResponse:
    """`{"code","message"[,"details"]}` with the protocol's codes."""
    payload = {"code": error.code, "message": error.message}
    if error.details is not None:
        payload["details"] = error.details
    response = HttpResponse(dumps(payload), status=error.status, content_type="application/json")
    for name, value in error.headers.items():
        response[name] = value
    return response


# OTLP/HTTP answers errors with a google.rpc.Status in the request's encoding.
GRPC_CODE_BY_STATUS = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    405: code_pb2.UNIMPLEMENTED,
    409: code_pb2.ALREADY_EXISTS,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.UNIMPLEMENTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
}


def otlp_error(request: HttpRequest, error: HttpError) -> HttpResponse:
    """A protobuf request gets a google.rpc.Status (the protocol's code at the
    start of its message); a JSON one the protocol's JSON error."""
    if (request.content_type or "").lower() != otlp.PROTOBUF:
        return json_error(request, error)
    status = status_pb2.Status(
        code=GRPC_CODE_BY_STATUS.get(error.status, code_pb2.INTERNAL), message=f"{error.code}: {error.message}"
    )
    response = HttpResponse(status.SerializeToString(), status=error.status, content_type=otlp.PROTOBUF)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _ingest(
    request: HttpRequest, handle: Callable[[HttpRequest], HttpResponse], render: ErrorRenderer = json_error
) -> HttpResponse:
    response = _answer(request, handle, render)
    # /metrics: dashboard_ingest_requests_total{endpoint, result="<status>"}.
    instruments.ingest_request(request.path_info, response.status_code)
    return response


def _answer(request: HttpRequest, handle: Callable[[HttpRequest], HttpResponse], render: ErrorRenderer) -> HttpResponse:
    try:
        if request.method != "POST":
            raise HttpError(
                405, INVALID_REQUEST, f"Method {request.method} not allowed: use POST", headers={"Allow": "POST"}
            )
        check_rate(writer_session(request))
        return handle(request)
    except HttpError as error:
        return render(request, error)
    except Exception:
        # The batch's transaction is rolled back; the cause stays in the log.
        logger.exception("ingest request to %s failed", request.path)
        return render(request, HttpError(500, INTERNAL_ERROR, "Internal server error"))


def _store_json(request: HttpRequest) -> HttpResponse:
    content_type_of(request, JSON_TYPES)
    readings, single = json_readings.parse(body_of(request))
    records = store(readings)
    return HttpResponse(encode(records[0] if single else records), status=201, content_type="application/json")


def _store_line_protocol(request: HttpRequest) -> HttpResponse:
    # `org` and `bucket` name InfluxDB's destination; here there is one store.
    precision = line_protocol.precision_of(request.GET.get("precision"))
    content_type_of(request, LINE_PROTOCOL_TYPES)
    store(line_protocol.parse(body_of(request), precision))
    response = HttpResponse(status=204)
    del response["Content-Type"]  # no body, none to describe (as InfluxDB answers)
    return response


def _store_otlp(request: HttpRequest) -> HttpResponse:
    content_type = content_type_of(request, OTLP_TYPES)
    store(otlp.readings(otlp.decode(body_of(request), content_type)))
    answer = ExportMetricsServiceResponse()
    if content_type == otlp.PROTOBUF:
        return HttpResponse(answer.SerializeToString(), status=200, content_type=otlp.PROTOBUF)
    return HttpResponse("{}", status=200, content_type=otlp.JSON)


@csrf_exempt
def metrics_json(request: HttpRequest) -> HttpResponse:
    """POST /api/metrics: a reading or an array of them; 201 with the records."""
    return _ingest(request, _store_json)


@csrf_exempt
def influx_write(request: HttpRequest) -> HttpResponse:
    """POST /api/v2/write: InfluxDB line protocol; 204 as InfluxDB answers."""
    return _ingest(request, _store_line_protocol)


@csrf_exempt
def otlp_metrics(request: HttpRequest) -> HttpResponse:
    """POST /v1/metrics: OTLP/HTTP, protobuf or JSON; 200 with an
    ExportMetricsServiceResponse in the request's encoding."""
    return _ingest(request, _store_otlp, otlp_error)
