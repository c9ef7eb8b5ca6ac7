"""Parsing requests and encoding the protocol's frames.

Encoding builds JSON text by hand around pre-encoded parts, so a record's
JSON (cached on `metrics.records.Record`) and a query result's JSON are made
once and reused in every frame that carries them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from metrics.records import Record

from .errors import INVALID_REQUEST, PARSE_ERROR, VALIDATION_ERROR, ProtocolError


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


class Refusal(str):
    """The error frame answering a request refused by the parser after its id
    is known: the consumer sends it in the request's turn, as it sends the
    frames of parsing errors."""


UNSTORABLE_MESSAGE = "Invalid string: NUL characters (\\u0000) and unpaired surrogates cannot be stored"
# JSON text can only carry NUL or a lone surrogate as a \u escape (raw control
# characters are invalid JSON, and a text frame is valid UTF-8), so frames
# without such an escape skip the walk; \ud800\udc00 pairs, which decode to
# one character, and escaped backslashes ("\\u0000") are sorted out by it.
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def parse(text: str) -> Request | Pong | Refusal:
    """A request, in the protocol's order of checks; errors carry id 0.

    A request whose strings (values or keys, anywhere) hold NUL or an unpaired
    surrogate is refused with its own id: PostgreSQL cannot store NUL, no
    database driver can encode a lone surrogate, and echoing one in an error
    message would break the UTF-8 frame. Refusing every such request here
    gives the same answer on every database and for every operation.
    """
    try:
        message = _decoder.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(PARSE_ERROR, "Invalid JSON") from None
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
    if "\\u" in text and _UNSTORABLE_ESCAPE.search(text) and has_unstorable_string(message):
        return Refusal(error_frame(request_id, VALIDATION_ERROR, UNSTORABLE_MESSAGE))
    return Request(id=request_id, type=kind, body=message)


def has_unstorable_string(value: Any) -> bool:
    """Whether a decoded JSON value holds a string (or an object key) with NUL
    or an unpaired surrogate. Iterative: the decoder accepts nesting deeper
    than the stack left here."""
    search = _UNSTORABLE_CHARACTER.search
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if search(item):
                return True
        elif isinstance(item, dict):
            for key in item:
                if search(key):
                    return True
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def is_finite_number(value: Any) -> TypeGuard[int | float]:
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
        if any(isinstance(v, Record) or (type(v) is list and v and type(v[0]) is Record) for v in value.values()):
            # A page of records (store.paginate): their cached encodings.
            return "{" + ",".join([dumps(str(k)) + ":" + encode(v) for k, v in value.items()]) + "}"
        # Plain data (a series, a summary row): one call, not one per leaf.
        return dumps(value)
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
