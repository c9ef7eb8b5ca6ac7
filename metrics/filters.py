"""Compiles protocol filters into Django Q objects.

Only fields named by the bucket's schema (and the record meta fields) can be
filtered, each mapped to its column here: no client string ever becomes an ORM
lookup. Comparisons follow the reference server's JavaScript semantics: a value
of another type than the field never matches (instead of being coerced), and
$startsWith/$endsWith are case-sensitive on every database.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db.models import F, Q, Value
from django.db.models.functions import Length, Right, Substr
from django.db.models.lookups import Exact, GreaterThan

from .errors import VALIDATION_ERROR, StoreError
from .schema import BucketSchema, is_number, to_finite_float

NOTHING = Q(pk__in=[])
EVERYTHING = Q()


def check_filter_size(spec: Any) -> None:
    """Refuses filters whose size would cost more to compile and run than any
    honest dashboard needs (DASHBOARD's MAX_FILTER_DEPTH, MAX_FILTER_ITEMS and
    MAX_FILTER_IN_ITEMS), before any recursion: a `$and` nested 330 deep must
    be a VALIDATION_ERROR, not a RecursionError."""
    limits = settings.DASHBOARD
    max_depth, max_items, max_in = limits["MAX_FILTER_DEPTH"], limits["MAX_FILTER_ITEMS"], limits["MAX_FILTER_IN_ITEMS"]
    items = 0
    stack: list[tuple[Any, int]] = [(spec, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.items())
            for key, value in children:
                if key in ("$in", "$nin") and isinstance(value, list) and len(value) > max_in:
                    raise StoreError(VALIDATION_ERROR, f'Filter too large: "{key}" lists at most {max_in} values')
            values = [value for _key, value in children]
        elif isinstance(node, list):
            values = node
        else:
            continue
        items += len(values)
        if items > max_items:
            raise StoreError(VALIDATION_ERROR, f"Filter too large: at most {max_items} conditions and values")
        if depth > max_depth:
            raise StoreError(VALIDATION_ERROR, f"Filter too deep: at most {max_depth} levels of nesting")
        stack.extend((value, depth + 1) for value in values if isinstance(value, (dict, list)))


def compile_filter(bucket: BucketSchema, spec: Any, path: str = "filter") -> Q:
    if path == "filter":
        check_filter_size(spec)
    if not isinstance(spec, dict):
        raise StoreError(VALIDATION_ERROR, f'Missing or invalid "{path}": expected object')
    q = EVERYTHING
    for name, condition in spec.items():
        if name in ("$and", "$or"):
            q &= _compile_logical(bucket, name, condition, path)
            continue
        column = bucket.column(name)
        if column is None:
            raise StoreError(VALIDATION_ERROR, f'Unknown field "{name}" in filter for bucket "{bucket.name}"')
        q &= _compile_condition(column, bucket.field_type(name), condition)
    return q


def _compile_logical(bucket: BucketSchema, op: str, parts: Any, path: str) -> Q:
    if not isinstance(parts, list):
        raise StoreError(VALIDATION_ERROR, f'Operator "{op}" expects a list of filters')
    if not parts:
        # As in the reference: no alternative matches nothing, no condition everything.
        return NOTHING if op == "$or" else EVERYTHING
    compiled = [compile_filter(bucket, part, f"{path}.{op}") for part in parts]
    result = compiled[0]
    for q in compiled[1:]:
        result = (result | q) if op == "$or" else (result & q)
    return result


def _is_operator_object(condition: Any) -> bool:
    return (
        isinstance(condition, dict)
        and bool(condition)
        and all(isinstance(k, str) and k.startswith("$") for k in condition)
    )


def _compile_condition(column: str, ftype: str, condition: Any) -> Q:
    if not _is_operator_object(condition):
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            raise StoreError(VALIDATION_ERROR, "Filter operators cannot be mixed with plain keys")
        return _eq(column, ftype, condition)
    q = EVERYTHING
    for op, operand in condition.items():
        handler = OPERATORS.get(op)
        if handler is None:
            raise StoreError(VALIDATION_ERROR, f'Unknown filter operator "{op}"')
        q &= handler(column, ftype, operand)
    return q


def _scalar(ftype: str, value: Any) -> Any:
    """The value as the column's type, or None when it can never match."""
    if ftype == "number":
        return to_finite_float(value) if is_number(value) else None
    return value if isinstance(value, str) else None


def _eq(column: str, ftype: str, value: Any) -> Q:
    if value is None:
        # Every field of our buckets always holds a value.
        return NOTHING
    scalar = _scalar(ftype, value)
    return NOTHING if scalar is None else Q(**{column: scalar})


def _neq(column: str, ftype: str, value: Any) -> Q:
    if value is None:
        return EVERYTHING
    scalar = _scalar(ftype, value)
    return EVERYTHING if scalar is None else ~Q(**{column: scalar})


def _comparison(lookup: str) -> Callable[[str, str, Any], Q]:
    def compile_comparison(column: str, ftype: str, value: Any) -> Q:
        scalar = _scalar(ftype, value)
        return NOTHING if scalar is None else Q(**{f"{column}__{lookup}": scalar})

    return compile_comparison


def _list_operand(op: str, operand: Any) -> list[Any]:
    if not isinstance(operand, list):
        raise StoreError(VALIDATION_ERROR, f'Operator "{op}" expects a list')
    return operand


def _in(column: str, ftype: str, operand: Any) -> Q:
    values = [s for s in (_scalar(ftype, v) for v in _list_operand("$in", operand)) if s is not None]
    return Q(**{f"{column}__in": values}) if values else NOTHING


def _nin(column: str, ftype: str, operand: Any) -> Q:
    values = [s for s in (_scalar(ftype, v) for v in _list_operand("$nin", operand)) if s is not None]
    return ~Q(**{f"{column}__in": values}) if values else EVERYTHING


def _string_operand(op: str, ftype: str, operand: Any) -> str | None:
    if not isinstance(operand, str):
        raise StoreError(VALIDATION_ERROR, f'Operator "{op}" expects a string')
    return operand if ftype == "string" else None


# $contains is a case-insensitive substring test, as in the reference store;
# $startsWith/$endsWith are case-sensitive, and since LIKE is not on SQLite
# they compare substrings exactly.
def _contains(column: str, ftype: str, operand: Any) -> Q:
    text = _string_operand("$contains", ftype, operand)
    if text is None:
        return NOTHING
    if not text.isascii():
        # SQLite's LIKE folds only ASCII letters; the reference lowercases
        # every letter. An escaped case-insensitive regex folds them all.
        return Q(**{f"{column}__iregex": re.escape(text)})
    return Q(**{f"{column}__icontains": text})


def _starts_with(column: str, ftype: str, operand: Any) -> Q:
    text = _string_operand("$startsWith", ftype, operand)
    if text is None:
        return NOTHING
    if text == "":
        return EVERYTHING
    return Q(Exact(Substr(F(column), 1, len(text)), Value(text)))


def _ends_with(column: str, ftype: str, operand: Any) -> Q:
    text = _string_operand("$endsWith", ftype, operand)
    if text is None:
        return NOTHING
    if text == "":
        return EVERYTHING
    return Q(GreaterThan(Length(F(column)), len(text) - 1)) & Q(Exact(Right(F(column), len(text)), Value(text)))


def _exists(column: str, ftype: str, operand: Any) -> Q:
    if not isinstance(operand, bool):
        raise StoreError(VALIDATION_ERROR, 'Operator "$exists" expects a boolean')
    return EVERYTHING if operand else NOTHING


def _between(column: str, ftype: str, operand: Any) -> Q:
    bounds = _list_operand("$between", operand)
    if len(bounds) != 2:
        raise StoreError(VALIDATION_ERROR, 'Operator "$between" expects a list of two values')
    low, high = (_scalar(ftype, b) for b in bounds)
    if low is None or high is None:
        return NOTHING
    return Q(**{f"{column}__gte": low, f"{column}__lte": high})


OPERATORS: dict[str, Callable[[str, str, Any], Q]] = {
    "$eq": _eq,
    "$neq": _neq,
    "$gt": _comparison("gt"),
    "$gte": _comparison("gte"),
    "$lt": _comparison("lt"),
    "$lte": _comparison("lte"),
    "$in": _in,
    "$nin": _nin,
    "$contains": _contains,
    "$startsWith": _starts_with,
    "$endsWith": _ends_with,
    "$exists": _exists,
    "$between": _between,
}
