"""Admin for alert transitions, read-only: they are recorded by
alerting.evaluation. Alerts are edited in the metrics admin; their states
are not registered here, so deleting an alert there takes its state along
without asking for a permission on states (alert-status shows them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import AlertTransition


@admin.register(AlertTransition)
class AlertTransitionAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    list_display = ("id", "alert_key", "metric", "severity", "from_state", "to_state", "value", "at", "delivery")
    # By alert, severity and state (the state entered).
    list_filter = ("severity", "to_state", "alert_key")
    search_fields = ("alert_key", "metric")

    @admin.display(description="webhook")
    def delivery(self, obj: AlertTransition) -> str:
        if obj.delivered_at is not None:
            return f"delivered after {obj.attempts} attempt(s)"
        if obj.given_up_at is not None:
            return f"given up after {obj.attempts} attempt(s)"
        if obj.pending:
            return f"queued ({obj.attempts} failed attempt(s))" if obj.attempts else "queued"
        return "not queued"
