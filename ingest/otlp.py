"""OTLP/HTTP metrics bodies (`POST /v1/metrics`) as readings, decoded with the
official `opentelemetry-proto` messages.

Gauges and sums give one reading per data point, named by the metric;
histograms (explicit and exponential) give `<name>.count`, `.sum`, `.min`,
`.max` (those present), summaries `.count` and `.sum`. Resource attributes
(except the exporter's own `telemetry.sdk.*` and the per-process
`service.instance.id`) and data point attributes
become labels of the name (ingest.naming; a data point's attribute wins).

Every data point counts toward the readings limit, even one that gives no
reading, and an OTLP/JSON body's points are counted before the JSON is
decoded into messages: a body of tiny points is refused early.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import DataPointFlags, Metric

from metrics.errors import VALIDATION_ERROR

from .errors import HttpError
from .naming import series_name
from .readings import Batch, Reading, check_count

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Resource attributes left out of names: the exporter library's own
# (`telemetry.sdk.name`, `.version`, `.language`), and the id the SDK draws at
# random for every process start, which would make each restart a new series.
SKIPPED_RESOURCE_PREFIXES = ("telemetry.sdk.", "service.instance.id")
NO_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK
_NESTING = re.compile(r"Failed to parse \w+ field: ")


def decode(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError:
            raise HttpError(400, VALIDATION_ERROR, "Invalid OTLP protobuf body") from None
        return request
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, VALIDATION_ERROR, "Invalid OTLP JSON body: not JSON") from None
    if not isinstance(document, dict):
        raise HttpError(400, VALIDATION_ERROR, "Invalid OTLP JSON body: expected an object")
    check_count(json_point_count(document))
    _drop_exemplars(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as error:
        # The parser nests one "Failed to parse <f> field: " per level; the
        # innermost message already names the whole path.
        reason = _NESTING.sub("", str(error)).rstrip(".")
        raise HttpError(400, VALIDATION_ERROR, f"Invalid OTLP JSON body: {reason}") from None
    return request


def _drop_exemplars(document: Any) -> None:
    # OTLP/JSON writes exemplars' trace and span ids in hex where protobuf's
    # JSON mapping expects base64; exemplars are not stored, so they go.
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            item.pop("exemplars", None)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        number = value.double_value
        return str(int(number)) if number.is_integer() else repr(number)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return "[" + ",".join(_text(item) for item in value.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + ",".join(f"{kv.key}={_text(kv.value)}" for kv in value.kvlist_value.values) + "}"
    return ""


def _labels(attributes: Any) -> dict[str, str]:
    pairs: list[KeyValue] = list(attributes)
    return {pair.key: _text(pair.value) for pair in pairs}


def _ms(time_unix_nano: int, now_ms: int) -> int:
    # 0 means "unknown" in OTLP: the server's time then.
    return time_unix_nano // 1_000_000 if time_unix_nano else now_ms


Values = list[tuple[str, str, float]]

# The `data` oneof's member name -> its data points (an explicit map: the
# name comes from the client's message, so no getattr on it).
POINTS: dict[str, Callable[[Metric], Sequence[Any]]] = {
    "gauge": lambda metric: metric.gauge.data_points,
    "sum": lambda metric: metric.sum.data_points,
    "histogram": lambda metric: metric.histogram.data_points,
    "exponential_histogram": lambda metric: metric.exponential_histogram.data_points,
    "summary": lambda metric: metric.summary.data_points,
}
# The same members and their points as OTLP/JSON may spell them (the
# protobuf JSON mapping accepts the lowerCamelCase and the field's own name).
JSON_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram", "summary")


def _points(metric: Metric) -> tuple[str | None, Sequence[Any]]:
    kind = metric.WhichOneof("data")
    points = POINTS.get(kind) if kind is not None else None
    return kind, points(metric) if points is not None else ()


def _values(kind: str | None, metric: Metric, point: Any) -> Values:
    """A data point's (name suffix, unit, value) readings."""
    if kind in {"gauge", "sum"}:
        which = point.WhichOneof("value")
        if which is None:
            return []
        return [("", metric.unit, point.as_double if which == "as_double" else point.as_int)]
    if kind == "summary":
        return [(".count", "", float(point.count)), (".sum", metric.unit, point.sum)]
    # histogram, exponential_histogram
    values: Values = [(".count", "", float(point.count))]
    if point.HasField("sum"):
        values.append((".sum", metric.unit, point.sum))
    if point.HasField("min"):
        values.append((".min", metric.unit, point.min))
    if point.HasField("max"):
        values.append((".max", metric.unit, point.max))
    return values


def json_point_count(document: dict[str, Any]) -> int:
    """How many data points an OTLP/JSON document holds, counted before the
    (slow, pure-Python) protobuf JSON parser builds one message per point."""
    count = 0
    for resource_metrics in _items(document, "resourceMetrics", "resource_metrics"):
        for scope_metrics in _items(resource_metrics, "scopeMetrics", "scope_metrics"):
            for metric in _items(scope_metrics, "metrics"):
                for kind in JSON_KINDS:
                    data = metric.get(kind)
                    if isinstance(data, dict):
                        count += sum(len(_items(data, key)) for key in ("dataPoints", "data_points"))
    return count


def _items(parent: Any, *keys: str) -> list[Any]:
    # The dicts under any of `keys`; the parser reports a malformed shape.
    found: list[Any] = []
    if isinstance(parent, dict):
        for key in keys:
            value = parent.get(key)
            if isinstance(value, list):
                found += [item for item in value if isinstance(item, dict)]
    return found


def readings(request: ExportMetricsServiceRequest) -> list[Reading]:
    """Every reading of the request; a metric without a name is a 400 naming
    it. Every data point counts toward the limit, even one that gives no
    reading (no recorded value), so a metric of too many points is refused
    before any of them is looked at."""
    now_ms = int(time.time() * 1000)
    batch = Batch()
    points_seen = 0
    for r, resource_metrics in enumerate(request.resource_metrics):
        resource = {
            key: value
            for key, value in _labels(resource_metrics.resource.attributes).items()
            if not key.startswith(SKIPPED_RESOURCE_PREFIXES)
        }
        for s, scope_metrics in enumerate(resource_metrics.scope_metrics):
            for m, metric in enumerate(scope_metrics.metrics):
                field = f"resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}]"
                if not metric.name:
                    raise HttpError(400, VALIDATION_ERROR, f'{field}: missing "name"', {"field": f"{field}.name"})
                kind, points = _points(metric)
                points_seen += len(points)
                check_count(points_seen)
                for p, point in enumerate(points):
                    if point.flags & NO_VALUE:
                        continue
                    values = _values(kind, metric, point)
                    if not values:
                        continue
                    labels = {**resource, **_labels(point.attributes)}
                    where = f'{field}.dataPoints[{p}] ("{metric.name}")'
                    for suffix, unit, value in values:
                        data = {
                            "name": series_name(metric.name + suffix, labels),
                            "value": value,
                            "unit": unit,
                            "timestamp": _ms(point.time_unix_nano, now_ms),
                        }
                        batch.add(Reading(data, where, {"field": f"{field}.dataPoints[{p}]"}))
    return batch.readings
