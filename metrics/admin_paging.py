"""Change-list counts that do not scan ten million readings.

Django's paginator counts the filtered rows (`SELECT COUNT(*)`), a scan of
the whole table when nothing filters it. The per-name figures already hold
every name's count (metrics.derived keeps them on every write), so the whole
table and one name are counted exactly from them; any other filter or
search is counted up to COUNT_LIMIT rows (a bounded subquery), and the list
says "COUNT_LIMIT" beyond it.
"""

from __future__ import annotations

from functools import cached_property
from typing import cast

from django.core.paginator import Paginator
from django.db.models import QuerySet, Sum
from django.http import HttpRequest

from .models import MetricNameStats

COUNT_LIMIT = 10_000
# Query-string parameters that do not change which rows match.
NEUTRAL = {"o", "p", "all", "_popup", "_to_field"}


def known_count(request: HttpRequest) -> int | None:
    """The exact number of readings the change list shows, when the per-name
    figures know it: unfiltered, or filtered by name alone."""
    filters = {key for key, value in request.GET.items() if value} - NEUTRAL
    if not filters:
        return MetricNameStats.objects.aggregate(total=Sum("count"))["total"] or 0
    if filters == {"name"}:
        row = MetricNameStats.objects.filter(name=request.GET["name"]).values_list("count", flat=True).first()
        return row or 0
    return None


class ReadingsPaginator(Paginator):
    def __init__(self, *args, count: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._known = count

    @cached_property
    def count(self) -> int:
        if self._known is not None:
            return self._known
        return min(cast(QuerySet, self.object_list)[: COUNT_LIMIT + 1].count(), COUNT_LIMIT)
