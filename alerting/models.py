"""Alert states, their transitions (the history and the webhook's queue) and
the webhook sender's lease. Kept in step with the `alerts` and `metrics`
buckets inside the transactions that change them (alerting.evaluation)."""

from __future__ import annotations

from django.db import models

from metrics.models import Alert

OK = "ok"
FIRING = "firing"
NO_DATA = "no-data"
STATES = (OK, FIRING, NO_DATA)
STATE_CHOICES = [(s, s) for s in STATES]


class AlertStatus(models.Model):
    """One per alert: its state and the newest reading's value. The alert's
    fields are copied here (kept in step on every save of the alert) so that a
    reading is evaluated from this table alone, through the index on `metric`."""

    alert = models.OneToOneField(Alert, on_delete=models.CASCADE, primary_key=True, related_name="status")
    alert_key = models.CharField(max_length=255)
    metric = models.TextField(db_index=True)
    threshold = models.FloatField()
    severity = models.CharField(max_length=6)
    state = models.CharField(max_length=8, choices=STATE_CHOICES)
    since = models.BigIntegerField(null=True, help_text="ms since epoch of the last change of state")
    value = models.FloatField(null=True, help_text="the metric's newest reading")

    class Meta:
        verbose_name = "alert status"
        verbose_name_plural = "alert statuses"
        ordering = ["alert_id"]

    def __str__(self) -> str:
        return f"{self.alert_key}: {self.state}"


class AlertTransition(models.Model):
    """A change of an alert's state, with the alert as it was then (the alert
    may be edited or deleted later). Pending rows are the webhook's queue."""

    alert_key = models.CharField(max_length=255, db_index=True, verbose_name="alert")
    metric = models.TextField()
    threshold = models.FloatField()
    severity = models.CharField(max_length=6, choices=[(s, s) for s in Alert.SEVERITIES])
    from_state = models.CharField(max_length=8, choices=STATE_CHOICES, verbose_name="from")
    to_state = models.CharField(max_length=8, choices=STATE_CHOICES, verbose_name="state")
    value = models.FloatField(null=True)
    at = models.BigIntegerField(help_text="ms since epoch")
    # The webhook queue: pending while it must still be POSTed.
    pending = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.BigIntegerField(null=True, help_text="ms since epoch")
    delivered_at = models.BigIntegerField(null=True, help_text="ms since epoch")
    given_up_at = models.BigIntegerField(null=True, help_text="ms since epoch")

    class Meta:
        verbose_name = "alert transition"
        ordering = ["-id"]
        indexes = [
            # The queue's head, without scanning the history.
            models.Index(fields=["id"], condition=models.Q(pending=True), name="alert_transition_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.alert_key}: {self.from_state} -> {self.to_state}"


class WebhookLease(models.Model):
    """One row: which server process delivers the webhook queue, until when.
    Claimed by an atomic UPDATE (alerting.webhook), so only one process sends
    at a time on SQLite and PostgreSQL alike."""

    id = models.PositiveSmallIntegerField(primary_key=True)
    holder = models.CharField(max_length=100, blank=True, default="")
    expires_at = models.BigIntegerField(default=0, help_text="ms since epoch")

    def __str__(self) -> str:
        return f"webhook lease: {self.holder or 'free'}"
