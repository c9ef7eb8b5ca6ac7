"""The ingest endpoints' expected failures: a protocol code and an HTTP status."""

from __future__ import annotations

from typing import Any

from metrics.errors import StoreError


class HttpError(StoreError):
    """An expected failure answered as `{"code","message"[,"details"]}` with
    `status`, plus `headers` (WWW-Authenticate, Retry-After, Allow)."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(code, message, details)
        self.status = status
        self.headers = headers or {}
