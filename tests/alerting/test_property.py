"""Property: after any sequence of writes to readings and alerts, by any
write path (services, transactions that fail, a shell, bulk deletes, clears,
prunes), every alert's stored state equals one computed afresh from its
metric's newest reading, and its transitions form one unbroken chain that
starts at no-data (before the alert existed) and ends in that state. Runs on SQLite and, in the suite's second pass, on
PostgreSQL."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerting.evaluation import state_of
from alerting.models import AlertStatus, AlertTransition
from metrics import services
from metrics.errors import StoreError
from metrics.models import Alert, Metric
from metrics.schema import BUCKETS
from tests.metrics.test_derived_property import NAMES, History, values
from tests.metrics.test_derived_property import _apply as apply_reading_step
from tests.metrics.test_derived_property import step as reading_step

ALERTS = BUCKETS["alerts"]
WATCHED = [*NAMES, "never.reported"]

alert_fields = st.fixed_dictionaries(
    {"metric": st.sampled_from(WATCHED), "threshold": values},
    optional={"severity": st.sampled_from(["low", "medium", "high"])},
)
alert_step = st.one_of(
    st.tuples(st.just("alert-insert"), alert_fields),
    st.tuples(st.just("alert-update"), st.integers(0, 10), alert_fields),
    st.tuples(st.just("alert-delete"), st.integers(0, 10)),
    st.tuples(st.just("alert-clear")),
    st.tuples(st.just("alert-then-fail"), alert_fields),
)


def apply_alert_step(choice: tuple) -> None:
    kind = choice[0]
    keys = list(Alert.objects.order_by("seq").values_list("key", flat=True))
    if kind == "alert-insert":
        services.record_insert(bucket=ALERTS, data={**choice[1], "timestamp": 1})
    elif kind == "alert-update" and keys:
        services.record_update(bucket=ALERTS, key=keys[choice[1] % len(keys)], data=dict(choice[2]))
    elif kind == "alert-delete" and keys:
        services.record_delete(bucket=ALERTS, key=keys[choice[1] % len(keys)])
    elif kind == "alert-clear":
        services.bucket_clear(bucket=ALERTS)
    elif kind == "alert-then-fail":
        # An alert and a reading written, then the transaction fails: nothing stays.
        operations = [
            services.Operation("insert", ALERTS, {"data": {**choice[1], "timestamp": 1}}),
            services.Operation(
                "insert",
                BUCKETS["metrics"],
                {"data": {"name": choice[1]["metric"] or "x", "value": 1e9, "timestamp": 1}},
            ),
            services.Operation("update", ALERTS, {"key": "missing", "data": {}}),
        ]
        with pytest.raises(StoreError):
            services.transaction_run(operations=operations)


def assert_states_right() -> None:
    newest: dict[str, float] = {}
    for name, value in Metric.objects.order_by("seq").values_list("name", "value"):
        newest[name] = value
    statuses = {s.alert_id: s for s in AlertStatus.objects.all()}
    alerts = list(Alert.objects.order_by("seq"))
    assert sorted(statuses) == [a.seq for a in alerts]
    chains: dict[str, list[AlertTransition]] = defaultdict(list)
    for transition in AlertTransition.objects.order_by("id"):
        assert transition.from_state != transition.to_state, transition
        chains[transition.alert_key].append(transition)
    for chain in chains.values():
        for before, after in itertools.pairwise(chain):
            assert before.to_state == after.from_state, (before, after)
    for alert in alerts:
        status = statuses[alert.seq]
        value = newest.get(alert.metric)
        assert (status.state, status.value) == (state_of(value, alert.threshold), value), alert
        assert (status.alert_key, status.metric, status.threshold, status.severity) == (
            alert.key,
            alert.metric,
            alert.threshold,
            alert.severity,
        )
        chain = chains.get(alert.key)
        if chain:
            # A new alert was no-data before it existed.
            assert chain[0].from_state == "no-data", chain[0]
            assert (chain[-1].to_state, chain[-1].at) == (status.state, status.since), alert
        else:
            assert (status.state, status.since) == ("no-data", None), alert


@pytest.mark.django_db(transaction=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    alerts=st.lists(alert_fields, min_size=1, max_size=4),
    steps=st.lists(st.one_of(reading_step, reading_step, alert_step), min_size=1, max_size=16),
)
def test_alert_states_equal_a_fresh_evaluation(alerts, steps):
    services.bucket_clear(bucket=BUCKETS["metrics"])
    services.bucket_clear(bucket=ALERTS)
    AlertTransition.objects.all().delete()
    history = History()
    for fields in alerts:
        apply_alert_step(("alert-insert", fields))
    for choice in steps:
        if choice[0].startswith("alert-"):
            apply_alert_step(choice)
        else:
            apply_reading_step(choice, history)
        assert_states_right()
