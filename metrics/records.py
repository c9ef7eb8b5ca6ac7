"""Process-local cache of committed records, keyed by row identity.

Reactive queries re-read their result after every change; reading only
(seq, version) pairs and taking unchanged records (and their JSON encoding)
from here makes a 10,000-record result cheap to re-evaluate. (seq, version)
names a record's content because every save bumps the version and seq is never
reused for committed rows. Rows read inside a transaction are not cached: a
rollback could let SQLite hand the same identity to different content.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection, models

from .schema import BucketSchema, record_from_row, row_columns

MAX_CACHED_RECORDS = 200_000


class Record(dict):
    """A record as the protocol sends it; treat as immutable, it is shared."""

    __slots__ = ("_json", "version")
    _json: str
    # The row's version: with its seq, what the cache keys a record's content by.
    version: int

    def json(self) -> str:
        try:
            return self._json
        except AttributeError:
            self._json = json.dumps(self, separators=(",", ":"), ensure_ascii=False)
            return self._json


_cache: dict[tuple[str, int], Record] = {}


def clear_cache() -> None:
    _cache.clear()


def remember(bucket: str, seq: int, record: Record) -> None:
    """Caches a committed record its writer already holds (metrics.changes)."""
    if len(_cache) >= MAX_CACHED_RECORDS:
        _cache.clear()
    _cache[(bucket, seq)] = record


def load(bucket: BucketSchema, identities: list[tuple[int, int]]) -> list[Record]:
    """Records for (seq, version) pairs, in the same order, reading only the misses."""
    name = bucket.name
    result: list[Record | None] = []
    missing: list[int] = []
    for seq, version in identities:
        record = _cache.get((name, seq))
        if record is not None and record.version == version:
            result.append(record)
        else:
            result.append(None)
            missing.append(seq)
    if missing:
        fetched = fetch_by_seq(bucket, missing)
        cacheable = not connection.in_atomic_block
        if cacheable and len(_cache) + len(fetched) > MAX_CACHED_RECORDS:
            _cache.clear()
        for i, (seq, _version) in enumerate(identities):
            if result[i] is None:
                record = fetched.get(seq)
                result[i] = record
                if record is not None and cacheable:
                    _cache[(name, seq)] = record
        # A row deleted by another process between the two reads is left out.
        return [record for record in result if record is not None]
    return result  # type: ignore[return-value]


def fetch_by_seq(bucket: BucketSchema, seqs: list[int]) -> dict[int, Record]:
    columns = row_columns(bucket)
    select = _select_by_seq(bucket)
    fetched: dict[int, Record] = {}
    with connection.cursor() as cursor:
        # Chunked: SQLite limits the number of bound parameters in one query.
        for start in range(0, len(seqs), 900):
            chunk = seqs[start : start + 900]
            cursor.execute(f"{select}({', '.join(['%s'] * len(chunk))})", chunk)
            for values in cursor.fetchall():
                row = dict(zip(columns, values, strict=False))
                record = Record(record_from_row(bucket, row))
                record.version = row["version"]
                fetched[row["seq"]] = record
    return fetched


# "SELECT <row columns> FROM <table> WHERE <seq> IN " per bucket. Built from
# the model's own names: the ORM's query compilation cost more than the read
# itself (0.27 ms for one record) on every change from another process. The
# columns are plain text and numbers, which both backends return as Python's
# own types, as values_list() would.
_selects: dict[str, str] = {}


def _column(meta: Any, name: str) -> str:
    field = meta.get_field(name)
    assert isinstance(field, models.Field) and field.column  # the bucket's own concrete fields
    return field.column


def _select_by_seq(bucket: BucketSchema) -> str:
    select = _selects.get(bucket.name)
    if select is None:
        meta = bucket.model._meta
        quote = connection.ops.quote_name
        names = ", ".join(quote(_column(meta, name)) for name in row_columns(bucket))
        select = _selects[bucket.name] = (
            f"SELECT {names} FROM {quote(meta.db_table)} WHERE {quote(_column(meta, 'seq'))} IN "
        )
    return select


def from_instance(bucket: BucketSchema, instance: Any) -> Record:
    row = {column: getattr(instance, column) for column in row_columns(bucket)}
    record = Record(record_from_row(bucket, row))
    record.version = row["version"]
    return record
