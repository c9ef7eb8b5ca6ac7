"""Bucket schemas: the one place that says which fields a bucket has, and how
client data is validated and records are serialized."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from .errors import BUCKET_NOT_DEFINED, VALIDATION_ERROR, StoreError
from .models import Alert, Metric

# Record fields the store maintains; clients may echo them back, never set them.
META_FIELDS = {"_version": "version", "_createdAt": "created_at", "_updatedAt": "updated_at"}
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # "string" | "number"
    column: str
    required: bool = False
    default: Any = None
    enum: tuple[str, ...] | None = None
    generated: bool = False
    # A string that must not be empty (an alert's metric: a name to watch).
    non_empty: bool = False


@dataclass(frozen=True)
class BucketSchema:
    name: str
    model: type[models.Model]
    fields: tuple[FieldSpec, ...]
    key_field: str = "id"
    # Fields with a database index besides the key.
    indexed_fields: tuple[str, ...] = ()
    by_name: dict[str, FieldSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def column(self, field_name: str) -> str | None:
        """The model column behind a client-visible field, or None if unknown."""
        spec = self.by_name.get(field_name)
        if spec is not None:
            return spec.column
        return META_FIELDS.get(field_name)

    def field_type(self, field_name: str) -> str:
        spec = self.by_name.get(field_name)
        return spec.type if spec is not None else "number"


BUCKETS: dict[str, BucketSchema] = {
    "metrics": BucketSchema(
        name="metrics",
        model=Metric,
        fields=(
            FieldSpec("id", "string", "key", generated=True),
            FieldSpec("name", "string", "name", required=True),
            FieldSpec("value", "number", "value", required=True),
            FieldSpec("unit", "string", "unit", default=""),
            FieldSpec("timestamp", "number", "timestamp", required=True),
        ),
        indexed_fields=("name",),
    ),
    "alerts": BucketSchema(
        name="alerts",
        model=Alert,
        fields=(
            FieldSpec("id", "string", "key", generated=True),
            FieldSpec("metric", "string", "metric", required=True, non_empty=True),
            FieldSpec("threshold", "number", "threshold", required=True),
            FieldSpec("severity", "string", "severity", default="low", enum=Alert.SEVERITIES),
            FieldSpec("timestamp", "number", "timestamp", required=True),
        ),
    ),
}
BUCKET_BY_MODEL: dict[type[models.Model], BucketSchema] = {b.model: b for b in BUCKETS.values()}


def get_bucket(name: Any) -> BucketSchema:
    if not isinstance(name, str) or not name:
        raise StoreError(VALIDATION_ERROR, 'Missing or invalid "bucket": expected non-empty string')
    try:
        return BUCKETS[name]
    except KeyError:
        raise StoreError(BUCKET_NOT_DEFINED, f'Bucket "{name}" is not defined') from None


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value, as the protocol's messages use it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_finite_float(value: Any) -> float | None:
    """The float a JSON number stands for, or None when it is not finite."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def json_number(value: float) -> int | float:
    """Integral floats go out as integers, as a JavaScript server would send them."""
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


Issue = dict[str, str]


def _check_value(spec: FieldSpec, value: Any) -> tuple[Any, Issue | None]:
    if spec.type == "number":
        if not is_number(value):
            return None, _issue(spec, "type", f'Expected type "number", got {json_type(value)}')
        number = to_finite_float(value)
        if number is None:
            return None, _issue(spec, "type", "Expected a finite number")
        return number, None
    if not isinstance(value, str):
        return None, _issue(spec, "type", f'Expected type "string", got {json_type(value)}')
    if spec.enum is not None and value not in spec.enum:
        return None, _issue(spec, "enum", f"Value must be one of: {', '.join(spec.enum)}")
    if spec.non_empty and not value:
        return None, _issue(spec, "min", "Must be a non-empty string")
    if spec.name == "id" and not (0 < len(value) <= MAX_KEY_LENGTH):
        return None, _issue(spec, "max", f"Key must be 1 to {MAX_KEY_LENGTH} characters")
    return value, None


def _issue(spec: FieldSpec, code: str, message: str) -> Issue:
    return {"field": spec.name, "message": message, "code": code}


def _raise_issues(bucket: BucketSchema, issues: list[Issue]) -> None:
    summary = "; ".join(f"{i['field']}: {i['message']}" for i in issues)
    raise StoreError(VALIDATION_ERROR, f'Validation failed for bucket "{bucket.name}": {summary}', issues)


def _unknown_fields(bucket: BucketSchema, data: dict[str, Any]) -> list[Issue]:
    # Storing only known fields would silently drop what the client sent.
    return [
        {"field": name, "message": "Unknown field", "code": "unknown"}
        for name in data
        if name not in bucket.by_name and name not in META_FIELDS
    ]


def validate_insert(bucket: BucketSchema, data: dict[str, Any]) -> dict[str, Any]:
    """Column values for a new record, defaults applied; raises VALIDATION_ERROR."""
    return _validate(bucket, data, partial=False)


def validate_update(bucket: BucketSchema, key: str, data: dict[str, Any]) -> dict[str, Any]:
    """Column values to change on an existing record; raises VALIDATION_ERROR.

    The key cannot change; like the reference, a copy of the record sent back
    as update data is accepted and its key (and meta fields) ignored.
    """
    return _validate(bucket, data, partial=True)


def _validate(bucket: BucketSchema, data: dict[str, Any], *, partial: bool) -> dict[str, Any]:
    """Checks fields in schema order (issues are reported in that order).
    `partial`: only the fields present are checked and returned."""
    issues: list[Issue] = []
    columns: dict[str, Any] = {}
    for spec in bucket.fields:
        if partial and (spec.name not in data or spec.generated):
            continue
        value = data.get(spec.name)
        if value is None:  # null counts as missing, as in the reference
            if spec.generated:
                columns[spec.column] = str(uuid.uuid4())
            elif spec.required:
                issues.append(_issue(spec, "required", "Field is required"))
            else:
                columns[spec.column] = spec.default
            continue
        cleaned, issue = _check_value(spec, value)
        if issue:
            issues.append(issue)
        else:
            columns[spec.column] = cleaned
    issues.extend(_unknown_fields(bucket, data))
    if issues:
        _raise_issues(bucket, issues)
    return columns


def record_from_row(bucket: BucketSchema, row: dict[str, Any]) -> dict[str, Any]:
    """The protocol's record from a row of column values, in schema order."""
    record: dict[str, Any] = {}
    for spec in bucket.fields:
        value = row[spec.column]
        record[spec.name] = json_number(value) if spec.type == "number" else value
    record["_version"] = row["version"]
    record["_createdAt"] = row["created_at"]
    record["_updatedAt"] = row["updated_at"]
    return record


def row_columns(bucket: BucketSchema) -> list[str]:
    """Columns to read for `record_from_row`, plus the identity (seq, version)."""
    columns = ["seq", "version", "created_at", "updated_at"]
    columns += [spec.column for spec in bucket.fields if spec.column not in columns]
    return columns
