"""Admin for alert transitions, read-only: they are recorded by
alerting.evaluation. Alerts are edited in the metrics admin; their states
are not registered here, so deleting an alert there takes its state along
without asking for a permission on states (alert-status shows them)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from metrics.admin_display import ms_text
from metrics.admin_filters import MAX_SUGGESTIONS, exact_filter
from metrics.models import Alert

from .models import AlertTransition


def alert_keys() -> list[str]:
    """The current alerts' keys, newest first, as suggestions."""
    return list(Alert._default_manager.order_by("-seq").values_list("key", flat=True)[:MAX_SUGGESTIONS])


# A text box for the alert (its key), not a link per alert ever recorded.
AlertKeyFilter = exact_filter("alert_key", "alert", alert_keys)


@admin.register(AlertTransition)
class AlertTransitionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "alert_key",
        "metric",
        "threshold",
        "severity",
        "from_state",
        "to_state",
        "value",
        "time",
        "delivery",
    )
    # By alert, severity and state (the state entered).
    list_filter = (AlertKeyFilter, "severity", "to_state")
    search_fields = ("=alert_key", "=metric")
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="at", ordering="at")
    def time(self, obj: AlertTransition) -> str:
        return ms_text(obj.at)

    @admin.display(description="webhook")
    def delivery(self, obj: AlertTransition) -> str:
        if obj.delivered_at is not None:
            return f"delivered {ms_text(obj.delivered_at)} after {obj.attempts} attempt(s)"
        if obj.given_up_at is not None:
            return f"given up after {obj.attempts} attempt(s)"
        if obj.pending:
            return f"queued ({obj.attempts} failed attempt(s))" if obj.attempts else "queued"
        return "not queued"
