"""`POST /api/metrics` bodies: one reading (a JSON object in the metrics
bucket's schema) or an array of them."""

from __future__ import annotations

import json
from typing import Any

from metrics.errors import VALIDATION_ERROR
from realtime.errors import PARSE_ERROR

from .errors import HttpError
from .readings import Reading, check_count


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser would accept them.
    raise ValueError(name)


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def parse(body: bytes) -> tuple[list[Reading], bool]:
    """The readings, and whether the body was one object (answered with one
    record) rather than an array."""
    try:
        value = _decoder.decode(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HttpError(400, PARSE_ERROR, "Invalid JSON") from None
    if isinstance(value, dict):
        return [Reading(value)], True
    if not isinstance(value, list):
        raise HttpError(400, VALIDATION_ERROR, "Body must be a reading (JSON object) or an array of readings")
    check_count(len(value))
    readings = []
    for index, item in enumerate(value):
        reading = Reading(item, f"Reading {index}", {"index": index})
        if not isinstance(item, dict):
            raise HttpError(400, VALIDATION_ERROR, f"Reading {index}: expected object", {"index": index})
        readings.append(reading)
    return readings, False
