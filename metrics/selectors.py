"""Reads of the store: plain lists of records and numbers, never QuerySets.

Every read that returns records goes through `records.load`, so a record's
dict (and its JSON encoding) is shared between evaluations while it is
unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections
from django.db.models import Avg, Max, Min, QuerySet, Sum

from . import derived, records
from .errors import VALIDATION_ERROR, StoreError, invalid_field
from .filters import check_filter_size, compile_filter
from .models import Metric
from .records import Record
from .schema import BUCKETS, BucketSchema, json_number


def _queryset(bucket: BucketSchema, filter_spec: Any = None) -> QuerySet:
    qs = bucket.model._default_manager.all()
    if filter_spec is not None:
        qs = qs.filter(compile_filter(bucket, filter_spec))
    return qs


def _load(bucket: BucketSchema, qs: QuerySet) -> list[Record]:
    return records.load(bucket, _identities(qs))


def _identities(qs: QuerySet) -> list[tuple[int, int]]:
    """(seq, version) of each row, straight from the cursor: Django's row
    iterator would cost more than the query itself for a large bucket."""
    try:
        sql, params = qs.values_list("seq", "version").query.sql_with_params()
    except EmptyResultSet:
        return []
    return _fetch(sql, params)


def _fetch(sql: str, params: tuple) -> list[tuple]:
    with connections["default"].cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# Reactive queries run the same few reads after every change; compiling one
# through the ORM costs more than running it (about 0.16 ms), so the SQL of
# each (bucket, filter, order, limit) is kept. Filters are plain JSON, and the
# same filter always compiles to the same SQL. Only small filters are kept
# (MAX_CACHED_FILTER_CHARS of JSON), so the cache's size is bounded whatever
# clients send, and an entry whose SQL fails is dropped.
_compiled: dict[tuple, tuple[str | None, tuple]] = {}
MAX_COMPILED = 2000


def _identity_sql(
    bucket: BucketSchema, filter_spec: Any = None, order: str | None = "seq", limit: int | None = None
) -> tuple[str | None, tuple]:
    if filter_spec is not None:
        check_filter_size(filter_spec)
    filter_key = _filter_key(filter_spec)
    key = (bucket.name, filter_key, order, limit)
    compiled = _compiled.get(key)
    if compiled is None:
        qs = _queryset(bucket, filter_spec)
        qs = qs.order_by(order) if order else qs.order_by()
        if limit is not None:
            qs = qs[:limit]
        try:
            compiled = qs.values_list("seq", "version").query.sql_with_params()
        except EmptyResultSet:  # a filter that can match nothing
            compiled = (None, ())
        if filter_key is None or len(filter_key) <= settings.DASHBOARD["MAX_CACHED_FILTER_CHARS"]:
            if len(_compiled) >= MAX_COMPILED:
                _compiled.clear()
            _compiled[key] = compiled
    return compiled


def compiled_filter_count() -> int:
    """How many compiled reads are kept (for checks and stats)."""
    return len(_compiled)


def _fetch_compiled(
    bucket: BucketSchema, sql: str, params: tuple, filter_spec: Any, order: str | None, limit: int | None
) -> list[tuple]:
    try:
        return _fetch(sql, params)
    except Exception:
        _compiled.pop((bucket.name, _filter_key(filter_spec), order, limit), None)
        raise


def _filter_key(filter_spec: Any) -> str | None:
    return None if filter_spec is None else json.dumps(filter_spec, sort_keys=True)


def _load_where(
    bucket: BucketSchema, filter_spec: Any = None, order: str = "seq", limit: int | None = None
) -> list[Record]:
    sql, params = _identity_sql(bucket, filter_spec, order, limit)
    return [] if sql is None else records.load(bucket, _fetch_compiled(bucket, sql, params, filter_spec, order, limit))


def record_get(*, bucket: BucketSchema, key: Any) -> Record | None:
    if not isinstance(key, str):
        # Keys are strings; the ORM would otherwise cast 5 to "5" and find it.
        return None
    found = _load(bucket, _queryset(bucket).filter(key=key))
    return found[0] if found else None


def record_all(*, bucket: BucketSchema) -> list[Record]:
    return _load_where(bucket)


def record_where(*, bucket: BucketSchema, filter: Any) -> list[Record]:
    return _load_where(bucket, filter)


def record_find_one(*, bucket: BucketSchema, filter: Any) -> Record | None:
    found = _load_where(bucket, filter, limit=1)
    return found[0] if found else None


def record_count(*, bucket: BucketSchema, filter: Any = None) -> int:
    sql, params = _identity_sql(bucket, filter, order=None)
    if sql is None:
        return 0
    return _fetch_compiled(bucket, f"SELECT COUNT(*) FROM ({sql}) AS counted", params, filter, None, None)[0][0]


def record_first(*, bucket: BucketSchema, n: int) -> list[Record]:
    return _load_where(bucket, limit=n)


def record_last(*, bucket: BucketSchema, n: int, filter: Any = None) -> list[Record]:
    """The newest n records (matching `filter`), oldest first."""
    sql, params = _identity_sql(bucket, filter, order="-seq", limit=n)
    if sql is None:
        return []
    newest = _fetch_compiled(bucket, sql, params, filter, "-seq", n)
    newest.reverse()
    return records.load(bucket, newest)


def record_paginate(*, bucket: BucketSchema, limit: int, after: str | None = None) -> dict[str, Any]:
    qs = _queryset(bucket).order_by("seq")
    if after is not None:
        cursor = bucket.model._default_manager.filter(key=after).values_list("seq", flat=True).first()
        if cursor is None:
            # As in the reference: nothing comes after a key that is not there.
            return {"records": [], "hasMore": False}
        qs = qs.filter(seq__gt=cursor)
    page = _load(bucket, qs[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    result: dict[str, Any] = {"records": page, "hasMore": has_more}
    if page:
        result["nextCursor"] = page[-1][bucket.key_field]
    return result


AGGREGATES = {"sum": Sum, "avg": Avg, "min": Min, "max": Max}


def record_aggregate(*, bucket: BucketSchema, op: str, field: Any, filter: Any = None) -> Any:
    if not isinstance(field, str) or not field:
        raise invalid_field("field", "non-empty string")
    column = bucket.column(field)
    if column is None:
        raise StoreError(VALIDATION_ERROR, f'Unknown field "{field}" for bucket "{bucket.name}"')
    if bucket.field_type(field) != "number":
        # The reference skips values that are not numbers: here, all of them.
        return 0 if op in ("sum", "avg") else None
    value = _queryset(bucket, filter).aggregate(result=AGGREGATES[op](column))["result"]
    if value is None:
        return 0 if op in ("sum", "avg") else None
    return json_number(float(value))


def record_stats_by_name(*, bucket: BucketSchema) -> list[dict[str, Any]]:
    """Per `name`: count, min, max, avg of `value`, and the value and unit of
    the newest reading (by insertion order), sorted by name.

    Read from the per-name figures the writes maintain (metrics.derived): the
    cost grows with the number of names, not of readings. Sorted here, by
    code point, so that both databases give the same order whatever their
    collation.
    """
    if bucket.model is not Metric:
        raise ValueError(f'bucket "{bucket.name}" keeps no per-name figures')
    rows = _fetch(f"SELECT name, count, sum, min, max, last_value, last_unit FROM {derived.STATS}", ())
    rows.sort(key=lambda row: row[0])
    return [
        {
            "name": name,
            "count": count,
            "min": json_number(float(low)),
            "max": json_number(float(high)),
            "avg": json_number(total / count),
            "last": json_number(float(last)),
            "unit": unit,
        }
        for name, count, total, low, high, last, unit in rows
    ]


def metrics_total() -> int:
    """How many readings are stored, from the per-name figures."""
    return int(_fetch(f"SELECT COALESCE(SUM(count), 0) FROM {derived.STATS}", ())[0][0])


def bucket_names() -> dict[str, Any]:
    names = list(BUCKETS)
    return {"count": len(names), "names": names}


def bucket_record_counts() -> dict[str, int]:
    return {name: b.model._default_manager.count() for name, b in BUCKETS.items()}
