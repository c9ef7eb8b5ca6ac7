"""The alert webhook sender against a real local HTTP receiver: order,
retries with backoff, timeouts, the lease between senders, giving up, the
bounded log, and a write path that never waits for the receiver."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import pytest

from alerting import webhook
from alerting.models import AlertTransition, WebhookLease
from metrics import services
from metrics.schema import get_bucket
from tests.alerting.receiver import Dripper, Receiver

pytestmark = pytest.mark.django_db(transaction=True)

METRICS, ALERTS = get_bucket("metrics"), get_bucket("alerts")


def config(url: str, **overrides: Any) -> webhook.Config:
    values: dict[str, Any] = {
        "url": url,
        "timeout": 1.0,
        "backoff": 0.05,
        "backoff_max": 0.2,
        "give_up_after": 0.0,
        "poll": 0.05,
        "lease": 3.0,
        **overrides,
    }
    return webhook.Config(**values)


@pytest.fixture
def queued(settings):
    """Transitions are queued as if a webhook were configured."""
    settings.DASHBOARD = {**settings.DASHBOARD, "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/unused"}


def make_transitions(*values: float) -> None:
    services.record_insert(
        bucket=ALERTS, data={"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high", "timestamp": 1}
    )
    for value in values:
        services.record_insert(bucket=METRICS, data={"name": "cpu", "value": value, "timestamp": 1})


def run_until(sender: webhook.Sender, done: Any, timeout: float = 10.0) -> None:
    """Runs the sender's steps in this thread (its database connection is the
    test's) until `done()`; waits between steps as the thread would."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "sender did not finish in time"
        delay = sender.step()
        if delay:
            time.sleep(delay)


def pending() -> int:
    return AlertTransition.objects.filter(pending=True).count()


def test_delivers_in_order_after_refusals_with_backoff_and_marks_delivered(queued):
    make_transitions(10, 90, 20, 95.5)  # no-data->ok, ok->firing, firing->ok, ok->firing
    ids = list(AlertTransition.objects.order_by("id").values_list("id", "at"))
    with Receiver(refuse_first=3) as receiver:
        sender = webhook.Sender(config(receiver.url))
        started = time.monotonic()
        run_until(sender, lambda: pending() == 0)
        elapsed = time.monotonic() - started
    assert receiver.ids == [tid for tid, _ in ids]
    alert = {"id": "a1", "metric": "cpu", "threshold": 50, "severity": "high"}
    assert receiver.accepted == [
        {"alert": alert, "from": "no-data", "to": "ok", "value": 10, "at": ids[0][1]},
        {"alert": alert, "from": "ok", "to": "firing", "value": 90, "at": ids[1][1]},
        {"alert": alert, "from": "firing", "to": "ok", "value": 20, "at": ids[2][1]},
        {"alert": alert, "from": "ok", "to": "firing", "value": 95.5, "at": ids[3][1]},
    ]
    # The first transition was refused three times, then sent; nothing behind it went first.
    assert receiver.attempts[:4] == [receiver.accepted[0]] * 4
    assert list(AlertTransition.objects.order_by("id").values_list("attempts", flat=True)) == [4, 1, 1, 1]
    assert AlertTransition.objects.filter(delivered_at__isnull=True).count() == 0
    assert elapsed >= 0.05 + 0.1 + 0.2  # three backoffs: 0.05, 0.1, then capped at 0.2


def test_backoff_doubles_up_to_its_bound():
    c = config("http://x", backoff=1, backoff_max=60)
    assert [c.delay_after(n) for n in (1, 2, 3, 6, 7, 50, 10_000)] == [1, 2, 4, 32, 60, 60, 60]


def test_a_receiver_that_answers_late_is_a_timeout_and_retried(queued):
    make_transitions(90)
    with Receiver(delay=0.5) as receiver:
        sender = webhook.Sender(config(receiver.url, timeout=0.2))
        assert sender.step() > 0  # timed out
        [transition] = AlertTransition.objects.all()
        assert (transition.pending, transition.attempts, transition.delivered_at) == (True, 1, None)
        receiver.delay = 0
        run_until(sender, lambda: pending() == 0)
    assert [b["to"] for b in receiver.accepted][-1] == "firing"


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(queued, caplog):
    # Each byte comes within 0.1 s, far within a per-read timeout of 0.5 s;
    # the whole 200 answer would take about 5.5 s, past a lease of 1.5 s.
    make_transitions(90)
    with Dripper(interval=0.1) as dripper:
        sender = webhook.Sender(config(dripper.url, timeout=0.5, lease=webhook.min_lease(0.5)))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="alerting.webhook"):
            assert sender.step() > 0  # a failure: retried after the backoff
        took = time.monotonic() - started
        assert dripper.cut_off.wait(5)  # the sender hung up mid-answer
        assert not dripper.answered.is_set() and dripper.requests == 1
    [transition] = AlertTransition.objects.all()
    assert (transition.pending, transition.attempts, transition.delivered_at) == (True, 1, None)
    assert (sender.delivered, sender.failures) == (0, 1)
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"alert webhook: transition {transition.id} not delivered (no answer within 0.5 s)"
    ]
    assert took < 3.0  # generous: the deadline is 0.5 s, the drip 5.5 s


def test_a_connection_made_after_the_deadline_is_not_used():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with webhook.Deadline(0.01) as deadline:
            time.sleep(0.2)
            with (
                socket.create_connection(listener.getsockname()) as sock,
                pytest.raises(TimeoutError, match="connected after the deadline"),
            ):
                deadline.watch(sock)
        assert deadline.expired


def test_the_lease_outlasts_the_deadline_or_is_lengthened_with_a_warning(settings, caplog):
    base = {**settings.DASHBOARD, "ALERT_WEBHOOK_URL": "http://127.0.0.1:9/hook"}
    settings.DASHBOARD = {**base, "ALERT_WEBHOOK_TIMEOUT_SECONDS": 5.0, "ALERT_WEBHOOK_LEASE_SECONDS": 30.0}
    with caplog.at_level(logging.WARNING, logger="alerting.webhook"):
        assert (webhook.Config.from_settings().timeout, webhook.Config.from_settings().lease) == (5.0, 30.0)
        assert caplog.records == []
        for timeout, lease, least in ((10.0, 29.0, 30.0), (1.0, 3.0, 6.0)):
            settings.DASHBOARD = {
                **base,
                "ALERT_WEBHOOK_TIMEOUT_SECONDS": timeout,
                "ALERT_WEBHOOK_LEASE_SECONDS": lease,
            }
            assert webhook.Config.from_settings().lease == least == webhook.min_lease(timeout)
        settings.DASHBOARD = {**base, "ALERT_WEBHOOK_TIMEOUT_SECONDS": 0, "ALERT_WEBHOOK_LEASE_SECONDS": 30.0}
        assert webhook.Config.from_settings().timeout == 5.0
    assert [r.getMessage() for r in caplog.records] == [
        "alert webhook: DASHBOARD_ALERT_WEBHOOK_LEASE_SECONDS 29 is too short for a 10 s timeout; using 30",
        "alert webhook: DASHBOARD_ALERT_WEBHOOK_LEASE_SECONDS 3 is too short for a 1 s timeout; using 6",
        "alert webhook: DASHBOARD_ALERT_WEBHOOK_TIMEOUT_SECONDS must be a positive number; using 5",
    ]


def test_a_redirect_is_a_failure_not_a_delivery(queued):
    make_transitions(90)
    with Receiver() as target, Receiver() as receiver:
        receiver.answer, receiver.location = 302, target.url
        sender = webhook.Sender(config(receiver.url))
        assert sender.step() > 0
        [transition] = AlertTransition.objects.all()
        assert (transition.pending, transition.attempts, transition.delivered_at) == (True, 1, None)
        assert len(receiver.attempts) == 1 and target.gets == 0  # not followed


def test_one_sender_holds_the_lease_until_it_expires(queued):
    make_transitions(90, 10)
    with Receiver() as receiver:
        first = webhook.Sender(config(receiver.url, lease=0.5), holder="first")
        second = webhook.Sender(config(receiver.url, lease=0.5), holder="second")
        assert first.step() == 0.0  # took the lease and sent one
        assert second.step() == second.config.poll  # waits: the lease is first's
        assert receiver.ids == [AlertTransition.objects.order_by("id")[0].id]
        time.sleep(0.6)  # first stops renewing (as a process that died would)
        run_until(second, lambda: pending() == 0)
        assert WebhookLease.objects.get().holder == "second"
        assert first.step() == first.config.poll  # first no longer sends
    assert len(receiver.attempts) == 2 and receiver.ids == sorted(receiver.ids)
    webhook.release_lease("second")
    assert WebhookLease.objects.values_list("holder", "expires_at").get() == ("second", 0)
    assert first.step() == first.config.poll  # nothing to send: an idle sender only reads
    assert WebhookLease.objects.values_list("holder", "expires_at").get() == ("second", 0)


def test_gives_up_on_a_transition_older_than_the_bound_and_goes_on(queued, caplog):
    make_transitions(90, 10)
    AlertTransition.objects.filter(to_state="firing").update(at=1)  # long ago
    with Receiver(refuse_first=1) as receiver:
        sender = webhook.Sender(config(receiver.url, give_up_after=3600))
        with caplog.at_level(logging.ERROR, logger="alerting.webhook"):
            run_until(sender, lambda: pending() == 0)
    assert [
        (t.to_state, t.given_up_at is not None, t.delivered_at is not None)
        for t in AlertTransition.objects.order_by("id")
    ] == [
        ("firing", True, False),
        ("ok", False, True),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"alert webhook: gave up on transition {AlertTransition.objects.order_by('id')[0].id} after 1 attempts (older than 3600 s)"
    ]


def test_failures_are_logged_at_most_once_a_minute_without_the_url_secret(queued, caplog):
    make_transitions(90)
    sender = webhook.Sender(config("http://127.0.0.1:9/hook?secret=s3cret", backoff=0, backoff_max=0))
    with caplog.at_level(logging.WARNING, logger="alerting.webhook"):
        for _ in range(20):
            sender.step()
    assert sender.failures == 20 and pending() == 1
    assert len(caplog.records) == 1
    assert "not delivered" in caplog.records[0].getMessage() and "s3cret" not in caplog.text
    assert AlertTransition.objects.get().attempts == 20


def test_writes_never_wait_for_the_receiver(settings):
    with Receiver(delay=2) as receiver:
        settings.DASHBOARD = {**settings.DASHBOARD, "ALERT_WEBHOOK_URL": receiver.url}
        started = time.monotonic()
        make_transitions(90, 10, 90)
        assert time.monotonic() - started < 1.0
        assert receiver.attempts == [] and pending() == 3


def test_the_process_sender_thread_delivers_and_stops(settings):
    with Receiver() as receiver:
        settings.DASHBOARD = {
            **settings.DASHBOARD,
            "ALERT_WEBHOOK_URL": receiver.url,
            "ALERT_WEBHOOK_POLL_SECONDS": 0.1,
        }
        sender = webhook.start()
        assert sender is not None and webhook.start() is sender  # one per process
        try:
            make_transitions(90)  # the commit wakes the sender
            [body] = receiver.wait_for(1, timeout=10)
            assert (body["from"], body["to"], body["value"]) == ("no-data", "firing", 90)
        finally:
            webhook.stop()
    assert WebhookLease.objects.get().expires_at == 0  # released on stop
