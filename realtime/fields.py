"""Checks of request fields, with the protocol's VALIDATION_ERROR messages."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from metrics.errors import VALIDATION_ERROR, StoreError, invalid_field
from metrics.schema import BucketSchema, get_bucket


def bucket(body: dict[str, Any]) -> BucketSchema:
    return get_bucket(body.get("bucket"))


def non_empty_string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise invalid_field(name, "non-empty string")
    return value


def obj(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise invalid_field(name, "object")
    return value


def optional_obj(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    return None if body.get(name) is None else obj(body, name)


def key(body: dict[str, Any]) -> Any:
    value = body.get("key")
    if value is None:
        raise StoreError(VALIDATION_ERROR, 'Missing "key": expected non-null value')
    return value


def positive_int(body: dict[str, Any], name: str, limit: int | None = None) -> int:
    """A positive integer up to `limit` (default DASHBOARD_MAX_RESULT_LIMIT)."""
    value = body.get(name)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
        or value < 1
    ):
        raise invalid_field(name, "positive integer")
    if limit is None:
        limit = settings.DASHBOARD["MAX_RESULT_LIMIT"]
    if value > limit:
        raise StoreError(VALIDATION_ERROR, f'Invalid "{name}": at most {limit}')
    return int(value)
