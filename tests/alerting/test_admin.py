"""Alerts through the Django admin (its real views): creating, editing and
deleting an alert, and deleting readings, re-evaluate at once and record the
transitions, which the admin lists with filters by alert, severity and state.
A viewer subscribed to alert-status sees an alert the admin creates."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

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


def alert_rows(client: Client, query: str = "") -> list[dict[str, str]]:
    """The alert list as rendered: per row, the text of each column."""
    response = client.get(f"/admin/metrics/alert/{query}")
    assert response.status_code == 200
    rows = re.findall(r"<tr>(.*?)</tr>", response.content.decode(), re.S)
    cells = [dict(re.findall(r'<t[hd] class="field-([a-z_]+)[^"]*"[^>]*>(.*?)</t[hd]>', row, re.S)) for row in rows]
    return [{name: html.unescape(re.sub(r"<[^>]+>", "", text)) for name, text in row.items()} for row in cells if row]


def test_the_alert_list_shows_each_state_and_since_when(admin_client):
    Metric.objects.create(name="cpu", value=99, timestamp=1)
    firing = add_alert(admin_client, "cpu", 50)
    quiet = add_alert(admin_client, "no.such.metric", 1, "low")
    since = AlertStatus.objects.get(alert_id=firing.seq).since
    assert since == firing.created_at
    rows = alert_rows(admin_client)
    columns = ["metric", "threshold", "severity", "state", "since", "time", "short_key", "version"]
    assert [list(row) for row in rows] == [columns, columns]  # newest first
    assert [(r["metric"], r["state"], r["since"]) for r in rows] == [
        ("no.such.metric", "no-data", "-"),  # Django's empty value
        ("cpu", "firing", ms_text(since)),  # a date, not ms
    ]
    # Sorted by state (the column's ordering is the state row's).
    assert [r["state"] for r in alert_rows(admin_client, "?o=4")] == ["firing", "no-data"]
    assert quiet.metric == "no.such.metric"


def test_the_alert_list_reads_the_states_in_its_one_query(admin_client):
    def list_queries() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert len(alert_rows(admin_client)) == Alert.objects.count()
        return [q["sql"] for q in queries.captured_queries]

    Metric.objects.create(name="cpu", value=99, timestamp=1)
    add_alert(admin_client, "cpu", 50)
    few = list_queries()
    for threshold in (60, 70, 80, 90, 100, 110):
        add_alert(admin_client, "cpu", threshold)
    many = list_queries()
    assert len(many) == len(few), many  # no query per row
    assert sum("alerting_alertstatus" in sql for sql in many) == 1


def test_the_alert_list_computes_the_state_of_an_alert_written_past_the_signals(admin_client):
    Metric.objects.create(name="cpu", value=99, timestamp=1)
    Alert.objects.bulk_create(
        [Alert(key="raw", metric="cpu", threshold=1, severity="low", timestamp=1, created_at=1, updated_at=1)]
    )
    [row] = alert_rows(admin_client)
    assert (row["state"], row["since"]) == ("firing", "-")
    assert not AlertStatus.objects.exists()  # a read stores nothing
