"""Admin for alert transitions, read-only: they are recorded by
alerting.evaluation. Alerts are edited in the metrics admin; this app
re-registers that admin with each alert's state and since when (metrics
does not know of alerting: the dependency goes one way). States are not
registered on their own, so deleting an alert takes its state along without
asking for a permission on states."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from metrics.admin import AlertAdmin
from metrics.admin_display import ms_text
from metrics.admin_filters import MAX_SUGGESTIONS, exact_filter
from metrics.models import Alert

from .evaluation import newest_value, state_of
from .models import AlertStatus, AlertTransition


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


class AlertWithStateAdmin(AlertAdmin):
    """The metrics admin's alert list with each alert's state and since when,
    read with the alerts in one query (a join of the one-to-one state row)."""

    # After metric, threshold and severity. (mypy infers the base's value as
    # a tuple of six; any sequence of names is what Django takes.)
    list_display = (*AlertAdmin.list_display[:3], "state", "since", *AlertAdmin.list_display[3:])  # type: ignore[assignment]
    list_select_related = ("status",)

    @admin.display(description="state", ordering="status__state")
    def state(self, alert: Alert) -> str:
        try:
            return str(alert.status.state)
        except AlertStatus.DoesNotExist:
            # Written past the signals (bulk_create): computed, as
            # alert-status does, never stored by a read.
            return state_of(newest_value(alert.metric), alert.threshold)

    @admin.display(description="since", ordering="status__since")
    def since(self, alert: Alert) -> str:
        try:
            return ms_text(alert.status.since)
        except AlertStatus.DoesNotExist:
            return ""


admin.site.unregister(Alert)
admin.site.register(Alert, AlertWithStateAdmin)
