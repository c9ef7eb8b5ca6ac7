"""The per-user request rate of the ingest endpoints (DASHBOARD_REQUEST_RATE)."""

from __future__ import annotations

import math
import threading

from django.conf import settings

from realtime.auth import Session
from realtime.errors import RATE_LIMITED
from realtime.request_limit import RequestLimiter

from .errors import HttpError

# Django runs sync views in worker threads; the limiter is not thread-safe.
_lock = threading.Lock()
_limiter: RequestLimiter | None = None


def check_rate(session: Session) -> None:
    """429 with Retry-After when the user is over the rate; nothing when the
    limit is off (0). Counted per process, apart from WebSocket requests."""
    global _limiter
    rate = settings.DASHBOARD["REQUEST_RATE"]
    if rate <= 0:
        return
    per = settings.DASHBOARD["REQUEST_RATE_WINDOW_SECONDS"]
    with _lock:
        if _limiter is None or (_limiter.rate, _limiter.per) != (rate, per):
            _limiter = RequestLimiter(rate, per)
        wait_ms = _limiter.retry_after_ms(session.user_id)
    if wait_ms:
        raise HttpError(
            429,
            RATE_LIMITED,
            f"Rate limit exceeded. Retry after {wait_ms}ms",
            {"retryAfterMs": wait_ms},
            headers={"Retry-After": str(math.ceil(wait_ms / 1000))},
        )


def forget() -> None:
    """Drops every user's count (tests)."""
    global _limiter
    with _lock:
        _limiter = None
