"""Django admin for inspecting the buckets; saves here push like any other write."""

from django.contrib import admin

from .models import Alert, Metric


@admin.register(Metric)
class MetricAdmin(admin.ModelAdmin):
    list_display = ("name", "value", "unit", "timestamp", "key", "version")
    list_filter = ("name", "unit")
    search_fields = ("name",)
    ordering = ("-timestamp",)
    readonly_fields = ("key", "version", "created_at", "updated_at")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("metric", "threshold", "severity", "timestamp", "key", "version")
    list_filter = ("severity",)
    search_fields = ("metric",)
    readonly_fields = ("key", "version", "created_at", "updated_at")
