"""The store's expected failures, each carrying a protocol error code."""

from __future__ import annotations

from typing import Any

VALIDATION_ERROR = "VALIDATION_ERROR"
BUCKET_NOT_DEFINED = "BUCKET_NOT_DEFINED"
NOT_FOUND = "NOT_FOUND"
CONFLICT = "CONFLICT"


class StoreError(Exception):
    """An expected failure that the protocol reports as an error frame."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def invalid_field(field: str, expected: str) -> StoreError:
    return StoreError(VALIDATION_ERROR, f'Missing or invalid "{field}": expected {expected}')
