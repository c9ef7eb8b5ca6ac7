"""Reads of alert states and transitions, as the alert queries return them."""

from __future__ import annotations

from typing import Any

from metrics.models import Alert
from metrics.schema import json_number

from .evaluation import newest_value, state_of
from .models import AlertStatus, AlertTransition


def _number(value: float | None) -> int | float | None:
    return None if value is None else json_number(float(value))


def alert_status() -> list[dict[str, Any]]:
    """One entry per alert, in the alerts bucket's (insertion) order."""
    rows = (
        Alert._default_manager.order_by("seq")
        .values_list("key", "metric", "threshold", "severity", "status__state", "status__since", "status__value")
        .iterator()
    )
    result = []
    for key, metric, threshold, severity, state, since, value in rows:
        if state is None:
            # An alert written past the model signals (bulk_create, raw SQL)
            # has no status row: computed here, never stored by a read.
            value = newest_value(metric)
            state = state_of(value, threshold)
        result.append(
            {
                "id": key,
                "metric": metric,
                "threshold": json_number(threshold),
                "severity": severity,
                "state": state,
                "since": since,
                "value": _number(value),
            }
        )
    return result


def watched_names() -> set[str]:
    """The metric names some alert watches (through the index on the states' metric)."""
    return set(AlertStatus.objects.values_list("metric", flat=True).distinct())


def transition_body(transition: AlertTransition) -> dict[str, Any]:
    """A transition as the webhook POSTs it (and alert-events lists it, with its id)."""
    return {
        "alert": {
            "id": transition.alert_key,
            "metric": transition.metric,
            "threshold": json_number(transition.threshold),
            "severity": transition.severity,
        },
        "from": transition.from_state,
        "to": transition.to_state,
        "value": _number(transition.value),
        "at": transition.at,
    }


def alert_events(*, n: int) -> list[dict[str, Any]]:
    """The newest n transitions, oldest first: {"id", "alert", "from", "to", "value", "at"}."""
    newest = list(AlertTransition.objects.order_by("-id")[:n])
    return [{"id": t.id, **transition_body(t)} for t in reversed(newest)]
