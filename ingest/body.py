"""Reading a request body within the limits: content type, encoding, size."""

from __future__ import annotations

import zlib

from django.conf import settings
from django.http import HttpRequest

from metrics.errors import VALIDATION_ERROR

from .errors import HttpError


def max_body_bytes() -> int:
    # The WebSocket's frame limit: what one request may make the server hold,
    # whichever way it arrives.
    return int(settings.DASHBOARD["MAX_FRAME_BYTES"])


def _too_large(limit: int) -> HttpError:
    return HttpError(413, VALIDATION_ERROR, f"Request body too large: at most {limit} bytes")


def content_type_of(request: HttpRequest, accepted: tuple[str, ...]) -> str:
    """The request's media type (parameters dropped) if it is one of
    `accepted` ("" stands for no Content-Type header); else 415."""
    media_type = (request.content_type or "").strip().lower()
    if media_type not in accepted:
        shown = ", ".join(t for t in accepted if t)
        raise HttpError(
            415, VALIDATION_ERROR, f'Unsupported Content-Type "{media_type}": expected {shown}', {"accepted": shown}
        )
    return media_type


def body_of(request: HttpRequest) -> bytes:
    """The body, gunzipped when `Content-Encoding: gzip`; 413 past the limit
    (before reading when Content-Length says so, and for the gunzipped bytes)."""
    limit = max_body_bytes()
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        raise HttpError(400, VALIDATION_ERROR, "Invalid Content-Length") from None
    if declared > limit:
        raise _too_large(limit)
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise _too_large(limit)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in {"", "identity"}:
        return raw
    if encoding != "gzip":
        raise HttpError(415, VALIDATION_ERROR, f'Unsupported Content-Encoding "{encoding}": expected gzip or identity')
    return _gunzip(raw, limit)


def _gunzip(raw: bytes, limit: int) -> bytes:
    # A few KB of gzip can stand for gigabytes: never inflate past the limit.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(raw, limit + 1)
        if len(data) > limit:
            raise _too_large(limit)
        if not inflater.eof or inflater.unused_data:
            raise HttpError(400, VALIDATION_ERROR, "Invalid gzip body")
    except zlib.error:
        raise HttpError(400, VALIDATION_ERROR, "Invalid gzip body") from None
    return data
