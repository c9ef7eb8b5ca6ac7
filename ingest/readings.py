"""Storing a batch of readings: one transaction through the store's services,
so the model signals run and subscribers see one change per batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from metrics.errors import CONFLICT, VALIDATION_ERROR
from metrics.records import Record
from metrics.schema import BUCKETS
from metrics.services import Operation, OperationFailed, transaction_run
from realtime.frames import UNSTORABLE_MESSAGE, has_unstorable_string

from .errors import HttpError

METRICS = BUCKETS["metrics"]
STATUS_BY_CODE = {VALIDATION_ERROR: 400, CONFLICT: 409}


@dataclass(frozen=True)
class Reading:
    """`data` for the metrics bucket, and where it came from for error messages:
    `where` a prefix such as "Line 3" (None: the body itself), `details` what
    an error about it carries (the line and its text, the OTLP field...)."""

    data: dict[str, Any]
    where: str | None = None
    details: dict[str, Any] | None = None


def max_readings() -> int:
    # A batch is one transaction, bounded as the protocol bounds one.
    return int(settings.DASHBOARD["MAX_TRANSACTION_OPERATIONS"])


def located(reading: Reading, code: str, message: str, details: Any = None, status: int = 400) -> HttpError:
    """An error about one reading, with where it came from."""
    if reading.where is not None:
        message = f"{reading.where}: {message}"
    if reading.details is not None:
        extra = details if isinstance(details, dict) else ({"issues": details} if details is not None else {})
        details = {**reading.details, **extra}
    return HttpError(status, code, message, details)


def too_many(limit: int) -> HttpError:
    # 413, as InfluxDB answers a batch too large: Telegraf then splits it.
    return HttpError(413, VALIDATION_ERROR, f"Too many readings: at most {limit} per request")


def check_count(count: int) -> None:
    limit = max_readings()
    if count > limit:
        raise too_many(limit)


class Batch:
    """A request's readings as its body is parsed. The one past the limit is
    refused as it is added, not once a metric or a line is complete: a body
    of tiny readings (empty histogram points, a line of 100,000 fields) then
    costs at most the limit's worth of readings before its 413."""

    def __init__(self) -> None:
        self.limit = max_readings()
        self.readings: list[Reading] = []

    def add(self, reading: Reading) -> None:
        if len(self.readings) >= self.limit:
            raise too_many(self.limit)
        self.readings.append(reading)


def store(readings: list[Reading]) -> list[Record]:
    """The stored records, all or nothing; HttpError names the reading at fault."""
    check_count(len(readings))
    if not readings:
        return []
    for reading in readings:
        # PostgreSQL cannot store NUL, no driver a lone surrogate: the same
        # answer on every database, as on the WebSocket.
        if has_unstorable_string(reading.data):
            raise located(reading, VALIDATION_ERROR, UNSTORABLE_MESSAGE)
    operations = [Operation("insert", METRICS, {"data": reading.data}) for reading in readings]
    try:
        result = transaction_run(operations=operations)
    except OperationFailed as failure:
        status = STATUS_BY_CODE.get(failure.code, 400)
        raise located(readings[failure.index], failure.code, failure.message, failure.details, status) from None
    return [item["data"] for item in result["results"]]
