"""Admin list filters that stay cheap at ten million readings.

Django's default filter for a text field lists every distinct value (one
`SELECT DISTINCT` over the whole table, and one link per name). These are a
text box instead: an exact match, which the (name, seq) and (name,
timestamp) indexes answer, with a bounded list of suggestions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import MetricNameStats

# Suggestions offered under the name box (a <datalist>), first by name.
MAX_SUGGESTIONS = 200


class ExactTextFilter(admin.ListFilter):
    """`?<field>=<value>`: the rows whose field equals the value."""

    template = "admin/metrics/text_filter.html"
    field = ""

    def __init__(self, request: HttpRequest, params: dict[str, Any], model: Any, model_admin: Any) -> None:
        super().__init__(request, params, model, model_admin)
        if self.field in params:
            self.used_parameters[self.field] = params.pop(self.field)[-1]

    def value(self) -> str:
        return str(self.used_parameters.get(self.field, ""))

    def has_output(self) -> bool:
        return True

    def expected_parameters(self) -> list[str | None]:
        return [self.field]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset

    def suggestions(self) -> list[str]:
        return []

    def choices(self, changelist: Any) -> Iterator[Any]:
        # One "choice": what the template needs to draw the form. The other
        # parameters of the page (search, other filters, ordering) ride along
        # as hidden fields; the page number does not.
        others = [
            (key, value) for key, values in changelist.filter_params.items() if key != self.field for value in values
        ]
        yield {
            "field": self.field,
            "value": self.value(),
            "others": others,
            "suggestions": self.suggestions(),
            "clear": changelist.get_query_string(remove=[self.field]),
        }


def exact_filter(field: str, title: str, suggest: Callable[[], list[str]] | None = None) -> type[ExactTextFilter]:
    attributes: dict[str, Any] = {"field": field, "title": title}
    if suggest is not None:
        attributes["suggestions"] = lambda self: suggest()
    return type(f"{field.title()}Filter", (ExactTextFilter,), attributes)


def metric_names() -> list[str]:
    """The first names, from the per-name figures (one row per name, not per reading)."""
    return list(MetricNameStats.objects.order_by("name").values_list("name", flat=True)[:MAX_SUGGESTIONS])


NameFilter = exact_filter("name", "name", metric_names)
UnitFilter = exact_filter("unit", "unit")
AlertMetricFilter = exact_filter("metric", "metric")
