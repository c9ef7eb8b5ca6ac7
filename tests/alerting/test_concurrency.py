"""PostgreSQL: an alert saved while another transaction is writing a reading
of its metric waits for that reading and starts in the state it gives."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from alerting import selectors
from metrics import services
from metrics.schema import get_bucket

METRICS, ALERTS = get_bucket("metrics"), get_bucket("alerts")


@pytest.mark.django_db(transaction=True)
def test_an_alert_created_during_a_reading_transaction_sees_that_reading():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing runs concurrently")
    services.record_insert(bucket=METRICS, data={"name": "cpu", "value": 10, "timestamp": 1})
    written, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with transaction.atomic():
                services.record_insert(bucket=METRICS, data={"name": "cpu", "value": 99, "timestamp": 2})
                written.set()
                assert release.wait(10)
        except BaseException as error:  # reported by the test thread
            errors.append(error)
        finally:
            connections.close_all()

    def creator() -> None:
        try:
            data = {"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high", "timestamp": 1}
            services.record_insert(bucket=ALERTS, data=data)
        except BaseException as error:
            errors.append(error)
        finally:
            connections.close_all()

    first = threading.Thread(target=writer)
    first.start()
    assert written.wait(10)
    second = threading.Thread(target=creator)
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the reading's transaction
    release.set()
    first.join(10)
    second.join(10)
    assert errors == [] and not second.is_alive()
    [status] = selectors.alert_status()
    assert (status["state"], status["value"]) == ("firing", 99)
