"""Retention of alert transitions: `prune_alert_events` deletes old ones in
batches and keeps those the webhook has not sent."""

from __future__ import annotations

import io
import time

import pytest
from django.core.management import CommandError, call_command

from alerting.history import prune_transitions
from alerting.models import AlertTransition

pytestmark = pytest.mark.django_db

D = 86_400_000
NOW = 1_800_000_000_000


def transition(at: int, pending: bool = False) -> AlertTransition:
    return AlertTransition.objects.create(
        alert_key="a1",
        metric="cpu",
        threshold=1,
        severity="low",
        from_state="ok",
        to_state="firing",
        at=at,
        pending=pending,
    )


def left() -> list[tuple[int, bool]]:
    return list(AlertTransition.objects.order_by("id").values_list("at", "pending"))


def test_prunes_old_sent_transitions_in_batches_and_keeps_the_queued():
    for days in (100, 95, 91, 89, 1):
        transition(NOW - days * D)
    transition(NOW - 200 * D, pending=True)  # the webhook still has to send it
    assert prune_transitions(older_than_ms=90 * D, now_ms=NOW, batch=2) == 3
    assert left() == [(NOW - 89 * D, False), (NOW - D, False), (NOW - 200 * D, True)]


def test_command_defaults_to_ninety_days_and_checks_its_arguments():
    transition(1)  # 1970
    transition(int(time.time() * 1000))
    out = io.StringIO()
    call_command("prune_alert_events", stdout=out)
    assert out.getvalue() == "deleted 1 alert transition(s) older than 90d\n"
    assert len(left()) == 1
    with pytest.raises(CommandError, match="--batch-size must be positive"):
        call_command("prune_alert_events", "--batch-size", "0")
    with pytest.raises(CommandError):
        call_command("prune_alert_events", "--older-than", "soon")
    with pytest.raises(ValueError, match="must not be negative"):
        prune_transitions(older_than_ms=-1)
