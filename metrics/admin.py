"""Django admin for inspecting the buckets; saves here push like any other write.

Built for people and for ten million readings: times as dates in the
server's time zone, one-line text boxes, exact-match filters instead of a
list of every name, counts from the per-name figures instead of a scan, and
a CSV export of what the list shows.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from .admin_display import ms_text
from .admin_export import csv_chunks, over_limit
from .admin_filters import AlertMetricFilter, NameFilter, UnitFilter
from .admin_paging import ReadingsPaginator, known_count
from .models import Alert, BucketRecord, Metric

# Names, units and metrics are TextFields (no length limit in the protocol);
# a one-line box fits them, a textarea per field did not.
TEXT_BOXES: dict[type[models.Field[Any, Any]], dict[str, Any]] = {
    models.TextField: {"widget": forms.TextInput(attrs={"class": "vTextField"})}
}


class BucketAdmin(admin.ModelAdmin):
    """What both buckets share: times, short keys, compact widgets, no full count."""

    formfield_overrides = TEXT_BOXES
    # Newest first by insertion: the primary key's index, at any size (the
    # time column sorts too, when clicked).
    ordering = ("-seq",)
    show_full_result_count = False
    readonly_fields = ("key", "version", "created", "updated")

    class Media:
        css = {"all": ("metrics/admin.css",)}

    @admin.display(description="time", ordering="timestamp")
    def time(self, record: Metric | Alert) -> str:
        return ms_text(record.timestamp)

    @admin.display(description="key", ordering="key")
    def short_key(self, record: BucketRecord) -> str:
        # The first 8 characters of a uuid tell rows apart on a page; the
        # whole key is in the tooltip and on the change page.
        return format_html('<span title="{}">{}</span>', record.key, record.key[:8])

    @admin.display(description="created", ordering="created_at")
    def created(self, record: BucketRecord) -> str:
        return ms_text(record.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, record: BucketRecord) -> str:
        return ms_text(record.updated_at)


@admin.register(Metric)
class MetricAdmin(BucketAdmin):
    list_display = ("shown_name", "value", "unit", "time", "short_key", "version")
    list_filter = (NameFilter, UnitFilter)
    # "=": an exact, case-insensitive match (no LIKE '%...%' scan); the name
    # filter is the indexed way.
    search_fields = ("=name",)
    change_list_template = "admin/metrics/metric/change_list.html"

    @admin.display(description="name", ordering="name")
    def shown_name(self, record: Metric) -> str:
        return format_html('<span title="{}">{}</span>', record.name, record.name)

    def get_paginator(
        self, request: HttpRequest, queryset: Any, per_page: int, orphans: int = 0, allow_empty_first_page: bool = True
    ) -> ReadingsPaginator:
        return ReadingsPaginator(queryset, per_page, orphans, allow_empty_first_page, count=known_count(request))

    def get_urls(self) -> list[URLPattern]:
        export = path("export.csv", self.admin_site.admin_view(self.export_csv), name="metrics_metric_export")
        return [export, *super().get_urls()]

    def export_csv(self, request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        """The readings the change list shows (its filters, search and
        ordering, every page) as CSV, or back to the list with an error when
        they are more than ADMIN_EXPORT_MAX_ROWS."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset = self.get_changelist_instance(request).queryset
        limit = settings.DASHBOARD["ADMIN_EXPORT_MAX_ROWS"]
        if over_limit(queryset, limit):
            self.message_user(
                request,
                f"More than {limit:,} readings match: narrow the filter to export (DASHBOARD_ADMIN_EXPORT_MAX_ROWS).",
                messages.ERROR,
            )
            query = request.GET.urlencode()
            return HttpResponseRedirect(reverse("admin:metrics_metric_changelist") + (f"?{query}" if query else ""))
        response = StreamingHttpResponse(csv_chunks(queryset), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="metrics.csv"'
        return response


@admin.register(Alert)
class AlertAdmin(BucketAdmin):
    list_display = ("metric", "threshold", "severity", "time", "short_key", "version")
    list_filter = ("severity", AlertMetricFilter)
    search_fields = ("=metric",)
