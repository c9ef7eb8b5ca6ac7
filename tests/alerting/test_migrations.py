"""The data migration gives alerts that existed before the alerting app their
computed state (`since` null, no transition) and creates the webhook lease."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from alerting.models import AlertStatus, AlertTransition, WebhookLease
from metrics.models import Alert, Metric


@pytest.mark.django_db(transaction=True)
def test_fill_states_for_existing_alerts():
    executor = MigrationExecutor(connection)
    executor.migrate([("alerting", "0001_initial")])
    AlertStatus.objects.all().delete()
    WebhookLease.objects.all().delete()
    # Written past the model signals, as rows that predate the app.
    Metric.objects.bulk_create(
        [
            Metric(key=key, name=name, value=value, timestamp=1, created_at=1, updated_at=1)
            for key, name, value in (("m1", "cpu", 99), ("m2", "mem", 10), ("m3", "cpu", 20))
        ]
    )
    Alert.objects.bulk_create(
        [
            Alert(key=key, metric=metric, threshold=15, severity="high", timestamp=1, created_at=1, updated_at=1)
            for key, metric in (("a-cpu", "cpu"), ("a-mem", "mem"), ("a-none", "none"))
        ]
    )
    executor = MigrationExecutor(connection)
    executor.migrate([("alerting", "0002_fill_states")])
    rows = AlertStatus.objects.order_by("alert_id").values_list(
        "alert_key", "metric", "threshold", "severity", "state", "since", "value"
    )
    assert list(rows) == [
        ("a-cpu", "cpu", 15, "high", "firing", None, 20),  # the newest cpu reading by insertion
        ("a-mem", "mem", 15, "high", "ok", None, 10),
        ("a-none", "none", 15, "high", "no-data", None, None),
    ]
    assert not AlertTransition.objects.exists()
    assert list(WebhookLease.objects.values_list("id", "holder", "expires_at")) == [(1, "", 0)]
