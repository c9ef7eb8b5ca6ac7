"""Alert evaluation in the writing transaction, through the services and the
bulk paths (store.clear, prune_metrics, a shell's bulk delete): each
transition, its record, and the states' values."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerting import selectors
from alerting.models import AlertStatus, AlertTransition
from metrics import retention, services
from metrics.models import Alert, Metric
from metrics.schema import get_bucket

pytestmark = pytest.mark.django_db

METRICS, ALERTS = get_bucket("metrics"), get_bucket("alerts")
D = 86_400_000


def reading(name: str, value: float, timestamp: float = 1_700_000_000_000) -> dict[str, Any]:
    return services.record_insert(bucket=METRICS, data={"name": name, "value": value, "timestamp": timestamp})


def alert(metric: str, threshold: float, severity: str = "high", key: str = "a1") -> dict[str, Any]:
    data = {"id": key, "metric": metric, "threshold": threshold, "severity": severity, "timestamp": 1}
    return services.record_insert(bucket=ALERTS, data=data)


def status() -> list[tuple[str, str, Any]]:
    return [(s["id"], s["state"], s["value"]) for s in selectors.alert_status()]


def moves() -> list[tuple[str, str, str, Any]]:
    return [(e["alert"]["id"], e["from"], e["to"], e["value"]) for e in selectors.alert_events(n=100)]


def test_a_new_alert_was_no_data_before_it_existed():
    # The example: "HIGH host.cpu above 50" created while host.cpu
    # reads 99 fires from its creation on, and says so.
    reading("host.cpu", 99)
    firing = alert("host.cpu", 50, key="firing")
    ok = alert("host.cpu", 100, key="ok")
    alert("nothing.here", 1, key="nodata")
    assert selectors.alert_status() == [
        {
            "id": "firing",
            "metric": "host.cpu",
            "threshold": 50,
            "severity": "high",
            "state": "firing",
            "since": firing["_createdAt"],
            "value": 99,
        },
        {
            "id": "ok",
            "metric": "host.cpu",
            "threshold": 100,
            "severity": "high",
            "state": "ok",
            "since": ok["_createdAt"],
            "value": 99,
        },
        {
            "id": "nodata",
            "metric": "nothing.here",
            "threshold": 1,
            "severity": "high",
            "state": "no-data",
            "since": None,
            "value": None,
        },
    ]
    events = selectors.alert_events(n=10)
    assert events == [
        {
            "id": events[0]["id"],
            "alert": {"id": "firing", "metric": "host.cpu", "threshold": 50, "severity": "high"},
            "from": "no-data",
            "to": "firing",
            "value": 99,
            "at": firing["_createdAt"],
        },
        {
            "id": events[0]["id"] + 1,
            "alert": {"id": "ok", "metric": "host.cpu", "threshold": 100, "severity": "high"},
            "from": "no-data",
            "to": "ok",
            "value": 99,
            "at": ok["_createdAt"],
        },
    ]


def test_a_new_alert_is_queued_for_the_webhook_like_any_transition(settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}
    reading("host.cpu", 99)
    alert("host.cpu", 50, key="firing")
    alert("nothing.here", 1, key="nodata")
    [queued] = AlertTransition.objects.all()
    assert (queued.alert_key, queued.from_state, queued.to_state, queued.pending, queued.next_attempt_at) == (
        "firing",
        "no-data",
        "firing",
        True,
        queued.at,
    )


def test_an_alert_written_past_the_signals_and_saved_later_records_its_first_state():
    reading("cpu", 80)
    Alert.objects.bulk_create(
        [Alert(key="raw", metric="cpu", threshold=1, severity="low", timestamp=1, created_at=1, updated_at=1)]
    )
    assert moves() == []
    services.record_update(bucket=ALERTS, key="raw", data={"severity": "high"})
    [entry] = selectors.alert_status()
    assert (entry["state"], entry["since"] > 1) == ("firing", True)  # the save's time, not the old creation's
    assert moves() == [("raw", "no-data", "firing", 80)]


def test_ok_to_firing_to_ok_records_each_transition_with_since_and_the_alert_snapshot():
    reading("cpu", 10)
    alert("cpu", 50.5, severity="medium")
    reading("cpu", 51)
    [firing] = selectors.alert_status()
    assert firing["state"] == "firing" and firing["value"] == 51
    [created, event] = selectors.alert_events(n=5)
    assert (created["from"], created["to"], created["value"]) == ("no-data", "ok", 10)
    assert event == {
        "id": event["id"],
        "alert": {"id": "a1", "metric": "cpu", "threshold": 50.5, "severity": "medium"},
        "from": "ok",
        "to": "firing",
        "value": 51,
        "at": firing["since"],
    }
    reading("cpu", 60)  # still firing: the value changes, no transition
    assert status() == [("a1", "firing", 60)] and len(moves()) == 2
    assert selectors.alert_status()[0]["since"] == firing["since"]
    reading("cpu", 50.5)  # at the threshold is ok
    assert status() == [("a1", "ok", 50.5)]
    assert moves() == [("a1", "no-data", "ok", 10), ("a1", "ok", "firing", 51), ("a1", "firing", "ok", 50.5)]


@pytest.mark.parametrize("value, state", [(7, "firing"), (3, "ok")])
def test_no_data_to_either(value, state):
    alert("disk", 5)
    assert status() == [("a1", "no-data", None)]
    reading("disk", value)
    assert status() == [("a1", state, value)]
    assert moves() == [("a1", "no-data", state, value)]


def test_newest_by_insertion_order_not_by_timestamp():
    alert("cpu", 50)
    reading("cpu", 99, timestamp=2_000)
    reading("cpu", 1, timestamp=1_000)  # older timestamp, newer reading
    assert status() == [("a1", "ok", 1)]


def test_editing_a_firing_alert_re_evaluates_it_with_the_edited_fields():
    reading("cpu", 80)
    reading("mem", 10)
    alert("cpu", 50)
    services.record_update(bucket=ALERTS, key="a1", data={"threshold": 90, "severity": "low"})
    assert status() == [("a1", "ok", 80)]
    services.record_update(bucket=ALERTS, key="a1", data={"metric": "gone"})
    assert status() == [("a1", "no-data", None)]
    services.record_update(bucket=ALERTS, key="a1", data={"metric": "cpu", "threshold": 10})
    assert [(e["alert"], e["from"], e["to"]) for e in selectors.alert_events(n=10)] == [
        ({"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high"}, "no-data", "firing"),
        ({"id": "a1", "metric": "cpu", "threshold": 90, "severity": "low"}, "firing", "ok"),
        ({"id": "a1", "metric": "gone", "threshold": 90, "severity": "low"}, "ok", "no-data"),
        ({"id": "a1", "metric": "cpu", "threshold": 10, "severity": "low"}, "no-data", "firing"),
    ]
    # The status follows the edited metric: readings of the old one no longer count.
    reading("gone", 1000)
    assert status() == [("a1", "firing", 80)]


def test_deleting_a_firing_alert_removes_its_state_and_keeps_its_history():
    alert("cpu", 50)
    reading("cpu", 80)
    services.record_delete(bucket=ALERTS, key="a1")
    assert selectors.alert_status() == [] and AlertStatus.objects.count() == 0
    assert moves() == [("a1", "no-data", "firing", 80)]
    reading("cpu", 1)  # nothing watches cpu any more
    assert len(moves()) == 1


def test_deleting_and_editing_readings_re_evaluate_when_the_newest_reading_changes():
    alert("cpu", 50)
    old = reading("cpu", 80)
    newest = reading("cpu", 10)
    services.record_update(bucket=METRICS, key=newest["id"], data={"value": 70})
    assert status() == [("a1", "firing", 70)]
    services.record_update(bucket=METRICS, key=newest["id"], data={"name": "other"})  # leaves cpu
    assert status() == [("a1", "firing", 80)]
    services.record_delete(bucket=METRICS, key=old["id"])
    assert status() == [("a1", "no-data", None)]
    assert moves() == [
        ("a1", "no-data", "firing", 80),
        ("a1", "firing", "ok", 10),
        ("a1", "ok", "firing", 70),
        ("a1", "firing", "no-data", None),
    ]


def test_store_clear_of_metrics_and_of_alerts():
    alert("cpu", 50, key="c")
    alert("mem", 50, key="m")
    reading("cpu", 80)
    reading("mem", 20)
    services.bucket_clear(bucket=METRICS)
    assert status() == [("c", "no-data", None), ("m", "no-data", None)]
    assert moves()[-2:] == [("c", "firing", "no-data", None), ("m", "ok", "no-data", None)]
    services.bucket_clear(bucket=ALERTS)
    assert selectors.alert_status() == [] and AlertStatus.objects.count() == 0
    assert len(moves()) == 4  # history stays


def test_prune_metrics_to_nothing_and_to_an_older_newest_reading():
    alert("cpu", 50, key="c")
    alert("mem", 50, key="m")
    now = 100 * D
    reading("cpu", 80, timestamp=now - 10 * D)
    reading("mem", 90, timestamp=now - 1)
    reading("mem", 20, timestamp=now - 10 * D)  # newest by insertion, oldest by timestamp
    assert status() == [("c", "firing", 80), ("m", "ok", 20)]
    assert retention.prune_raw(older_than_ms=7 * D, now_ms=now) == 2
    assert status() == [("c", "no-data", None), ("m", "firing", 90)]
    assert moves()[-2:] == [("c", "firing", "no-data", None), ("m", "ok", "firing", 90)]


def test_a_shell_bulk_delete_re_evaluates():
    alert("cpu", 50)
    reading("cpu", 10)
    reading("cpu", 80)
    Metric.objects.filter(name="cpu").delete()
    assert status() == [("a1", "no-data", None)]


def test_a_failed_transaction_leaves_no_state_and_no_transition():
    reading("cpu", 10)
    alert("cpu", 50)
    with pytest.raises(services.OperationFailed):
        services.transaction_run(
            operations=[
                services.Operation("insert", METRICS, {"data": {"name": "cpu", "value": 99, "timestamp": 1}}),
                services.Operation("update", ALERTS, {"key": "missing", "data": {"threshold": 1}}),
            ]
        )
    assert status() == [("a1", "ok", 10)] and moves() == [("a1", "no-data", "ok", 10)]


def test_a_reading_of_a_name_without_alerts_costs_one_alerting_query():
    alert("cpu", 50)
    with CaptureQueriesContext(connection) as queries:
        reading("unwatched", 1)
    alerting = [q["sql"] for q in queries.captured_queries if "alerting_" in q["sql"]]
    assert len(alerting) == 1, alerting
    assert "metric" in alerting[0]


def test_an_alert_written_past_the_signals_is_still_reported():
    reading("cpu", 80)
    Alert.objects.bulk_create(
        [Alert(key="raw", metric="cpu", threshold=1, severity="low", timestamp=1, created_at=1, updated_at=1)]
    )
    assert status() == [("raw", "firing", 80)]


def test_transitions_are_queued_only_when_a_webhook_is_configured(settings):
    alert("cpu", 50)
    reading("cpu", 80)
    settings.DASHBOARD = {**settings.DASHBOARD, "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}
    reading("cpu", 10)
    assert list(AlertTransition.objects.order_by("id").values_list("to_state", "pending")) == [
        ("firing", False),
        ("ok", True),
    ]


def insert_op(name: str, value: float) -> services.Operation:
    return services.Operation("insert", METRICS, {"data": {"name": name, "value": value, "timestamp": 1}})


def test_a_batch_is_evaluated_once_per_name_at_its_end():
    reading("cpu", 10)
    alert("cpu", 50)
    # Above and back below inside one transaction: nobody ever saw it fire.
    services.transaction_run(operations=[insert_op("cpu", 90), insert_op("cpu", 20)])
    created = ("a1", "no-data", "ok", 10)
    assert status() == [("a1", "ok", 20)] and moves() == [created]
    services.transaction_run(operations=[insert_op("cpu", 20), insert_op("cpu", 95), insert_op("mem", 1)])
    assert status() == [("a1", "firing", 95)] and moves() == [created, ("a1", "ok", "firing", 95)]
    # Pipelined inserts share a transaction too.
    outcomes = services.record_insert_each(
        items=[(METRICS, {"name": "cpu", "value": v, "timestamp": 1}) for v in (60, 5)]
    )
    assert all(isinstance(o, dict) for o in outcomes)
    assert status() == [("a1", "ok", 5)] and moves()[-1] == ("a1", "firing", "ok", 5)


def test_an_alert_in_a_batch_sees_the_readings_before_it():
    services.transaction_run(
        operations=[
            insert_op("cpu", 90),
            services.Operation(
                "insert", ALERTS, {"data": {"id": "a1", "metric": "cpu", "threshold": 50, "timestamp": 1}}
            ),
            insert_op("cpu", 91),
        ]
    )
    # Created after the first reading (no-data -> firing at 90), then 91.
    assert status() == [("a1", "firing", 91)] and moves() == [("a1", "no-data", "firing", 90)]


def test_a_batch_looks_up_alerts_once_per_100_names():
    alert("cpu", 50)
    with CaptureQueriesContext(connection) as queries:
        services.transaction_run(operations=[insert_op(f"n{i % 3}", i) for i in range(60)])
    alerting = [q["sql"] for q in queries.captured_queries if "alerting_" in q["sql"]]
    assert len(alerting) == 1 and "WHERE metric IN ('n0', 'n1', 'n2')" in alerting[0], alerting

    names = ["cpu", *(f"m{i:03d}" for i in range(149))]
    with CaptureQueriesContext(connection) as queries:
        services.transaction_run(operations=[insert_op(name, 60) for name in names])
    lookups = [q["sql"] for q in queries.captured_queries if "FROM alerting_alertstatus WHERE metric IN" in q["sql"]]
    assert [sql.count("'") // 2 for sql in lookups] == [100, 50]  # names quoted in the captured SQL
    # The one watched name among them was evaluated: cpu went from no-data to firing.
    assert status() == [("a1", "firing", 60)]
