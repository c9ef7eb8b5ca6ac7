"""Parsing requests and encoding the protocol's frames.

Encoding builds JSON text by hand around pre-encoded parts, so a record's
JSON (cached on `metrics.records.Record`) and a query result's JSON are made
once and reused in every frame that carries them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from metrics.records import Record

from .errors import INVALID_REQUEST, PARSE_ERROR, ProtocolError


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's parser would accept them.
    raise ValueError(name)


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass
class Request:
    id: int | float
    type: str
    body: dict[str, Any]


class Pong:
    """A valid heartbeat answer: no reply."""


PONG = Pong()


def parse(text: str) -> Request | Pong:
    """A request, in the protocol's order of checks; errors carry id 0."""
    try:
        message = _decoder.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(PARSE_ERROR, "Invalid JSON") from None
    if "\\u" in text and _has_lone_surrogate(message):
        # JSON allows "\ud800" alone, but no database or UTF-8 frame can carry it.
        raise ProtocolError(PARSE_ERROR, "Invalid JSON")
    if not isinstance(message, dict):
        raise ProtocolError(PARSE_ERROR, "Message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(INVALID_REQUEST, 'Message must include non-empty string "type"')
    if kind == "pong":
        if not is_finite_number(message.get("timestamp")):
            raise ProtocolError(INVALID_REQUEST, 'Pong must include finite numeric "timestamp"')
        return PONG
    request_id = message.get("id")
    if not is_finite_number(request_id):
        raise ProtocolError(INVALID_REQUEST, 'Request must include finite numeric "id"')
    return Request(id=request_id, type=kind, body=message)


def _has_lone_surrogate(message: Any) -> bool:
    try:
        dumps(message).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except ValueError:  # a number out of range for allow_nan=False
        return False
    return False


def is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(value: Any) -> str:
    """JSON text of a result, reusing each record's cached encoding."""
    if isinstance(value, Record):
        return value.json()
    if isinstance(value, list):
        if value and all(type(item) is Record for item in value):
            # The common case (a query's records): no recursion per item.
            return "[" + ",".join([item.json() for item in value]) + "]"
        return "[" + ",".join([encode(item) for item in value]) + "]"
    if isinstance(value, dict):
        return "{" + ",".join([dumps(str(k)) + ":" + encode(v) for k, v in value.items()]) + "}"
    return dumps(value)


def _id(request_id: int | float) -> str:
    if isinstance(request_id, float) and request_id.is_integer() and abs(request_id) < 2**53:
        request_id = int(request_id)
    return dumps(request_id)


def result_frame(request_id: int | float, data_json: str) -> str:
    return '{"id":' + _id(request_id) + ',"type":"result","data":' + data_json + "}"


def error_frame(request_id: int | float, code: str, message: str, details: Any = None) -> str:
    frame = '{"id":' + _id(request_id) + ',"type":"error","code":' + dumps(code) + ',"message":' + dumps(message)
    if details is not None:
        frame += ',"details":' + dumps(details)
    return frame + "}"


def push_frame_prefix(subscription_id: str) -> str:
    """A push frame up to its data: the frame is prefix + data JSON + "}"."""
    return '{"type":"push","channel":"subscription","subscriptionId":' + dumps(subscription_id) + ',"data":'



def welcome_frame(server_time_ms: int) -> str:
    return dumps({"type": "welcome", "version": "1.0.0", "serverTime": server_time_ms, "requiresAuth": True})


def ping_frame(timestamp_ms: int) -> str:
    return dumps({"type": "ping", "timestamp": timestamp_ms})


def system_frame(event: str, **fields: Any) -> str:
    return dumps({"type": "system", "event": event, **fields})
