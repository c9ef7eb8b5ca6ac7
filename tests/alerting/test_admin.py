"""Alerts through the Django admin (its real views): creating, editing and
deleting an alert, and deleting readings, re-evaluate at once and record the
transitions, which the admin lists with filters by alert, severity and state.
A viewer subscribed to alert-status sees an alert the admin creates."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from alerting.models import AlertStatus, AlertTransition
from metrics.admin_display import ms_text
from metrics.models import Alert, Metric

pytestmark = pytest.mark.django_db(transaction=True)

# `admin_client`: pytest-django's client logged in as a superuser.


def add_alert(client: Client, metric: str, threshold: float, severity: str = "high") -> Alert:
    data = {"metric": metric, "threshold": threshold, "severity": severity, "timestamp": 1}
    response = client.post("/admin/metrics/alert/add/", data)
    assert (response.status_code, response["Location"]) == (302, "/admin/metrics/alert/"), response.content[:2000]
    return Alert.objects.get(metric=metric, threshold=threshold)


def state(alert: Alert) -> tuple[str, Any]:
    status = AlertStatus.objects.get(alert_id=alert.seq)
    return status.state, status.value


def moves() -> list[tuple[str, str, str, Any]]:
    return list(AlertTransition.objects.order_by("id").values_list("alert_key", "from_state", "to_state", "value"))


def test_admin_creates_edits_and_deletes_a_firing_alert(admin_client):
    Metric.objects.create(name="cpu", value=99, timestamp=1)
    alert = add_alert(admin_client, "cpu", 50)
    # Created while cpu reads 99: it was no-data before it existed.
    assert state(alert) == ("firing", 99) and moves() == [(alert.key, "no-data", "firing", 99)]

    data = {"metric": "cpu", "threshold": 99.5, "severity": "low", "timestamp": 1}
    response = admin_client.post(f"/admin/metrics/alert/{alert.seq}/change/", data)
    assert response.status_code == 302
    assert state(alert) == ("ok", 99)
    assert list(
        AlertTransition.objects.order_by("id").values_list("threshold", "severity", "from_state", "to_state")
    ) == [
        (50, "high", "no-data", "firing"),
        (99.5, "low", "firing", "ok"),
    ]

    admin_client.post(f"/admin/metrics/alert/{alert.seq}/change/", {**data, "threshold": 1})
    response = admin_client.post(f"/admin/metrics/alert/{alert.seq}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Alert.objects.exists() and not AlertStatus.objects.exists()
    assert moves() == [
        (alert.key, "no-data", "firing", 99),
        (alert.key, "firing", "ok", 99),
        (alert.key, "ok", "firing", 99),
    ]  # deleting records nothing


def test_admin_deletes_of_readings_re_evaluate(admin_client):
    alert = add_alert(admin_client, "cpu", 50)
    old = Metric.objects.create(name="cpu", value=10, timestamp=1)
    newest = Metric.objects.create(name="cpu", value=90, timestamp=1)
    other = Metric.objects.create(name="mem", value=1, timestamp=1)
    assert state(alert) == ("firing", 90)
    response = admin_client.post(f"/admin/metrics/metric/{newest.seq}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert state(alert) == ("ok", 10)
    action = {"action": "delete_selected", "_selected_action": [old.seq, other.seq], "post": "yes"}
    assert admin_client.post("/admin/metrics/metric/", action).status_code == 302
    assert state(alert) == ("no-data", None)
    assert moves() == [
        (alert.key, "no-data", "ok", 10),
        (alert.key, "ok", "firing", 90),
        (alert.key, "firing", "ok", 10),
        (alert.key, "ok", "no-data", None),
    ]


def test_transitions_admin_filters_by_alert_severity_and_state(admin_client):
    high = add_alert(admin_client, "cpu", 50, "high")
    low = add_alert(admin_client, "mem", 50, "low")
    for name, value in (("cpu", 90), ("mem", 90), ("cpu", 10)):
        Metric.objects.create(name=name, value=value, timestamp=1)

    def listed(query: str) -> list[tuple[str, str, str]]:
        response = admin_client.get(f"/admin/alerting/alerttransition/{query}")
        assert response.status_code == 200
        return sorted((t.alert_key, t.from_state, t.to_state) for t in response.context["cl"].result_list)

    everything = listed("")
    assert everything == sorted(
        [
            (high.key, "no-data", "firing"),
            (low.key, "no-data", "firing"),
            (high.key, "firing", "ok"),
        ]
    )
    assert listed("?severity__exact=low") == [(low.key, "no-data", "firing")]
    assert listed("?to_state__exact=ok") == [(high.key, "firing", "ok")]
    assert listed(f"?alert_key={high.key}") == sorted([(high.key, "no-data", "firing"), (high.key, "firing", "ok")])
    assert listed("?alert_key=no-such-alert") == []
    page = admin_client.get("/admin/alerting/alerttransition/?to_state__exact=ok").content.decode()
    ok = AlertTransition.objects.get(to_state="ok")
    assert ms_text(ok.at) in page and "not queued" in page  # the time as a date; no webhook was set
    assert f'<option value="{high.key}">' in page  # the alert box suggests the current alerts
    # History is kept by the evaluation, never written by hand.
    assert admin_client.get("/admin/alerting/alerttransition/add/").status_code == 403


async def test_a_viewer_sees_an_alert_the_admin_creates(connect, admin_client):
    await sync_to_async(Metric.objects.create)(name="cpu", value=99, timestamp=1)
    viewer = await connect("viewer-token")
    subscribed = await viewer.ok("store.subscribe", query="alert-status")
    assert subscribed["data"] == []
    alert = await sync_to_async(add_alert)(admin_client, "cpu", 50)
    sub = subscribed["subscriptionId"]
    assert await viewer.push_for(sub) == {
        "type": "push",
        "channel": "subscription",
        "subscriptionId": sub,
        "data": [
            {
                "id": alert.key,
                "metric": "cpu",
                "threshold": 50,
                "severity": "high",
                "state": "firing",
                "since": alert.created_at,  # fires from its creation
                "value": 99,
            }
        ],
    }
