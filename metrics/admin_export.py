"""The admin's CSV export of readings: the change list's current filter,
search and ordering, streamed, at most DASHBOARD["ADMIN_EXPORT_MAX_ROWS"] rows.

Rows are read in chunks through `QuerySet.aiterator()` and written as they
come, so neither the server nor the database holds the whole export (an
async iterator: Django's ASGI handler would read a synchronous one into a
list first).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from django.db.models import QuerySet

from .admin_display import ms_to_local

HEADER = ("id", "name", "value", "unit", "timestamp", "time")
COLUMNS = ("key", "name", "value", "unit", "timestamp")
CHUNK_ROWS = 2000
# A spreadsheet runs a cell that starts with one of these as a formula; the
# names and units are the clients' choice (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def row(key: str, name: str, value: float, unit: str, timestamp: float) -> list[Any]:
    when = ms_to_local(timestamp)
    return [
        cell(key),
        cell(name),
        repr(value),
        cell(unit),
        repr(timestamp),
        "" if when is None else when.isoformat(timespec="milliseconds"),
    ]


def lines(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


def over_limit(queryset: QuerySet, limit: int) -> bool:
    """Whether more than `limit` rows match, counting at most limit + 1."""
    return queryset[: limit + 1].count() > limit


async def csv_chunks(queryset: QuerySet) -> AsyncIterator[str]:
    yield lines([HEADER])
    batch: list[list[Any]] = []
    # Model instances, not values_list(): Django 5.2's values_list iterable
    # runs its query as soon as it is made, which aiterator() does in the
    # event loop's thread (SynchronousOnlyOperation).
    async for reading in queryset.only(*COLUMNS).aiterator(chunk_size=CHUNK_ROWS):
        batch.append(row(reading.key, reading.name, reading.value, reading.unit, reading.timestamp))
        if len(batch) >= CHUNK_ROWS:
            yield lines(batch)
            batch = []
    if batch:
        yield lines(batch)
