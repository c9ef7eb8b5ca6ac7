"""Evaluates alerts inside the transactions that change readings or alerts.

An alert fires while the newest reading (by insertion order) of its metric is
above its threshold, is ok while it is at or below it, and has no data while
the metric has no reading. A written or removed reading re-evaluates only the
alerts on its name, found through the index on `AlertStatus.metric`; a name
without alerts costs that one indexed query. A change of state is recorded as
an `AlertTransition` in the same transaction (and queued for the webhook when
one is configured). docs/alerts.md has the whole design.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from metrics import models as store
from metrics.models import Alert, Metric, MetricNameStats

from . import webhook
from .models import FIRING, NO_DATA, OK, AlertStatus, AlertTransition

STATUS = AlertStatus._meta.db_table
METRIC = Metric._meta.db_table
NAME_STATS = MetricNameStats._meta.db_table


def state_of(value: float | None, threshold: float) -> str:
    if value is None:
        return NO_DATA
    return FIRING if value > threshold else OK


# Names per query of the watched alerts (a batch of readings names up to
# MAX_TRANSACTION_OPERATIONS metrics).
NAMES_PER_QUERY = 100


@functools.cache
def _statements(vendor: str, names: int = 1) -> tuple[str, str]:
    # PostgreSQL: the status rows are locked, so two transactions writing
    # readings of one name evaluate one after the other, and the second sees
    # the first's reading. Rows are locked in the order returned, (metric,
    # alert_id), the same in every transaction. SQLite has one writer at a
    # time already.
    lock = " FOR UPDATE" if vendor == "postgresql" else ""
    watched = (
        f"SELECT metric, alert_id, alert_key, threshold, severity, state, value FROM {STATUS} "
        f"WHERE metric IN ({', '.join(['%s'] * names)}) ORDER BY metric, alert_id{lock}"
    )
    newest = f"SELECT value FROM {connection.ops.quote_name(METRIC)} WHERE name = %s ORDER BY seq DESC LIMIT 1"
    return watched, newest


def newest_value(name: str) -> float | None:
    """The value of `name`'s newest reading by insertion order (through the
    (name, seq) index), or None when it has none."""
    with connection.cursor() as cursor:
        cursor.execute(_statements(connection.vendor)[1], [name])
        row = cursor.fetchone()
    return None if row is None else float(row[0])


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An alert's fields as a transition records them."""

    key: str
    metric: str
    threshold: float
    severity: str


def _record(alert: Snapshot, before: str, after: str, value: float | None, at: int) -> None:
    queued = bool(settings.DASHBOARD["ALERT_WEBHOOK_URL"])
    AlertTransition.objects.create(
        alert_key=alert.key,
        metric=alert.metric,
        threshold=alert.threshold,
        severity=alert.severity,
        from_state=before,
        to_state=after,
        value=value,
        at=at,
        pending=queued,
        next_attempt_at=at if queued else None,
    )
    if queued:
        # The local sender starts at once instead of at its next poll.
        transaction.on_commit(webhook.wake)


def readings_changed(names: Iterable[str]) -> None:
    """Re-evaluates the alerts on these metric names: a reading of each was
    written or removed in the current transaction (already in the table).
    One indexed query per 100 names finds their alerts; names without
    alerts cost nothing more."""
    wanted = sorted(set(names))
    with connection.cursor() as cursor:
        for first in range(0, len(wanted), NAMES_PER_QUERY):
            chunk = wanted[first : first + NAMES_PER_QUERY]
            cursor.execute(_statements(connection.vendor, len(chunk))[0], chunk)
            watched: dict[str, list[tuple]] = {}
            for name, *alert in cursor.fetchall():
                watched.setdefault(name, []).append(tuple(alert))
            for name, alerts in watched.items():
                _evaluate_name(cursor, name, alerts)


def _evaluate_name(cursor: Any, name: str, alerts: list[tuple]) -> None:
    value = newest_value(name)
    now = store.now_ms()
    for alert_id, key, threshold, severity, state, old_value in alerts:
        after = state_of(value, threshold)
        if after == state and old_value == value:
            continue
        if after != state:
            _record(Snapshot(key, name, threshold, severity), state, after, value, now)
            cursor.execute(
                f"UPDATE {STATUS} SET state = %s, since = %s, value = %s WHERE alert_id = %s",
                [after, now, value, alert_id],
            )
        else:
            cursor.execute(f"UPDATE {STATUS} SET value = %s WHERE alert_id = %s", [value, alert_id])


def all_readings_changed() -> None:
    """Any name may have lost readings (the bucket was cleared)."""
    readings_changed(AlertStatus.objects.values_list("metric", flat=True).distinct().order_by("metric"))


def alert_saved(alert: Alert, created: bool) -> None:
    """A new or edited alert: evaluated at once. A new alert counts as
    `no-data` before it existed, so creating one whose metric has a reading
    records `no-data -> ok` or `no-data -> firing` at its creation time (the
    page and the webhook learn when a firing alert started); one whose
    metric has no reading records nothing and keeps `since` null. An edit
    that changes the state records a transition with the alert as edited."""
    # A shell's autocommit save too: the status row is locked and written
    # in one transaction.
    with transaction.atomic(savepoint=False):
        _evaluate_alert(alert, created)


def _evaluate_alert(alert: Alert, created: bool) -> None:
    if connection.vendor == "postgresql":
        # A transaction writing a reading of this metric holds its per-name
        # figures' row (metrics.derived) until it commits; waiting for it
        # here means the newest reading below includes that reading, while a
        # later writer waits for this alert's commit and then evaluates it.
        # Taken before the status row, in the order writers take them.
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {NAME_STATS} WHERE name = %s FOR UPDATE", [alert.metric])
    value = newest_value(alert.metric)
    after = state_of(value, alert.threshold)
    copies = {"alert_key": alert.key, "metric": alert.metric, "threshold": alert.threshold, "severity": alert.severity}
    snapshot = Snapshot(alert.key, alert.metric, alert.threshold, alert.severity)
    status = AlertStatus.objects.select_for_update().filter(alert_id=alert.seq).first()
    if status is None:
        # No state stored yet: a new alert, or one written past the signals
        # (bulk_create) and saved now. Either way it was `no-data` before.
        since = None
        if after != NO_DATA:
            since = alert.created_at if created else store.now_ms()
            _record(snapshot, NO_DATA, after, value, since)
        AlertStatus.objects.create(alert_id=alert.seq, state=after, since=since, value=value, **copies)
        return
    fields = {**copies, "value": value}
    if after != status.state:
        now = store.now_ms()
        _record(snapshot, status.state, after, value, now)
        fields.update(state=after, since=now)
    AlertStatus.objects.filter(alert_id=alert.seq).update(**fields)


def alerts_cleared() -> None:
    """Every alert was deleted by one statement (`store.clear`): their states
    go with them. Their transitions stay, as history."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {STATUS}")
