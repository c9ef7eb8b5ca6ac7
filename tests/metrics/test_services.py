"""Store services: transactions are all or nothing, and each committed
transaction is reported once, after commit, through `records_changed`."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from metrics import selectors, services
from metrics.changes import records_changed
from metrics.errors import CONFLICT, NOT_FOUND, VALIDATION_ERROR, StoreError
from metrics.models import Alert, Metric
from metrics.schema import BUCKETS

METRICS = BUCKETS["metrics"]
ALERTS = BUCKETS["alerts"]


def row(name: str = "cpu", value: float = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": "%", "timestamp": 1, **extra}


def op(name: str, bucket=METRICS, **args: Any) -> services.Operation:
    return services.Operation(op=name, bucket=bucket, args=args)


@pytest.fixture
def published():
    """The `changes` of every records_changed signal sent during the test."""
    sent: list[dict] = []

    def receiver(sender, changes, **kwargs):
        sent.append(changes)

    records_changed.connect(receiver, dispatch_uid="test-services-receiver")
    yield sent
    records_changed.disconnect(dispatch_uid="test-services-receiver")


# --- all or nothing ----------------------------------------------------------------


@pytest.mark.django_db
def test_transaction_failing_operation_rolls_back_earlier_writes():
    kept = services.record_insert(bucket=METRICS, data=row("kept", id="k"))
    with pytest.raises(StoreError) as raised:
        services.transaction_run(
            operations=[
                op("insert", data=row("a", id="a")),
                op("update", key="k", data={"value": 50}),
                op("delete", key="k"),
                op("insert", bucket=ALERTS, data={"metric": "a", "threshold": 1, "timestamp": 1}),
                op("update", key="missing", data={"value": 2}),
                op("insert", data=row("never")),
            ]
        )
    error = raised.value
    assert (error.code, error.message, error.details, error.index) == (
        NOT_FOUND,
        'Record with key "missing" not found in bucket "metrics"',
        None,
        4,
    )
    assert selectors.record_all(bucket=METRICS) == [kept]
    assert selectors.record_all(bucket=ALERTS) == []


@pytest.mark.django_db
def test_transaction_conflict_and_validation_roll_back():
    kept = services.record_insert(bucket=METRICS, data=row("kept", id="k"))
    with pytest.raises(StoreError) as raised:
        services.transaction_run(operations=[op("insert", data=row("a", id="a")), op("insert", data=row("b", id="k"))])
    assert (raised.value.code, raised.value.details, raised.value.index) == (
        CONFLICT,
        {"bucket": "metrics", "key": "k"},
        1,
    )
    with pytest.raises(StoreError) as raised:
        services.transaction_run(operations=[op("insert", data=row("a", id="a")), op("insert", data={"name": "b"})])
    assert (raised.value.code, raised.value.index) == (VALIDATION_ERROR, 1)
    with pytest.raises(StoreError) as raised:
        services.transaction_run(operations=[op("insert", data=row("a", id="a")), op("where", filter={"bogus": 1})])
    assert (raised.value.code, raised.value.index) == (VALIDATION_ERROR, 1)
    assert selectors.record_all(bucket=METRICS) == [kept]
    # The database is still usable after the failed transactions.
    new = services.record_insert(bucket=METRICS, data=row("a", id="a"))
    assert selectors.record_all(bucket=METRICS) == [kept, new]


@pytest.mark.django_db
def test_transaction_success_returns_results_in_order():
    result = services.transaction_run(
        operations=[
            op("insert", data=row("a", id="a")),
            op("count"),
            op("get", key="a"),
            op("delete", key="a"),
            op("count", filter={"name": "a"}),
        ]
    )
    [a] = [r["data"] for r in result["results"][:1]]
    assert result == {
        "results": [
            {"index": 0, "data": a},
            {"index": 1, "data": 1},
            {"index": 2, "data": a},
            {"index": 3, "data": {"deleted": True}},
            {"index": 4, "data": 0},
        ]
    }
    assert a["id"] == "a" and a["_version"] == 1
    assert selectors.record_all(bucket=METRICS) == []


# --- changes are published once per transaction, after commit -------------------


@pytest.mark.django_db(transaction=True)
def test_one_signal_per_transaction(published):
    result = services.transaction_run(
        operations=[
            op("insert", data=row("c", id="c")),
            op("insert", data=row("a", id="a")),
            op("insert", data=row("b")),
        ]
    )
    generated = result["results"][2]["data"]["id"]
    assert published == [{"metrics": sorted(["a", "c", generated])}]


@pytest.mark.django_db(transaction=True)
def test_one_signal_listing_every_bucket_and_key(published):
    services.record_insert(bucket=METRICS, data=row("x", id="x"))
    services.record_insert(bucket=METRICS, data=row("y", id="y"))
    published.clear()
    services.transaction_run(
        operations=[
            op("update", key="x", data={"value": 2}),
            op("delete", key="y"),
            op("delete", key="nothing-here"),
            op("insert", bucket=ALERTS, data={"id": "al", "metric": "x", "threshold": 1, "timestamp": 1}),
            op("get", key="x"),
            op("update", key="x", data={"value": 3}),
        ]
    )
    assert published == [{"metrics": ["x", "y"], "alerts": ["al"]}]


@pytest.mark.django_db(transaction=True)
def test_reads_publish_nothing(published):
    services.record_insert(bucket=METRICS, data=row("x", id="x"))
    published.clear()
    services.transaction_run(operations=[op("get", key="x"), op("where", filter={}), op("count")])
    services.record_delete(bucket=METRICS, key="missing")
    assert published == []


@pytest.mark.django_db(transaction=True)
def test_each_service_call_is_one_change(published):
    a = services.record_insert(bucket=METRICS, data=row("a"))
    services.record_update(bucket=METRICS, key=a["id"], data={"value": 5})
    services.record_delete(bucket=METRICS, key=a["id"])
    assert published == [{"metrics": [a["id"]]}] * 3


def _stored() -> list[tuple[str, str, float]]:
    return list(Metric.objects.order_by("seq").values_list("key", "name", "value"))


@pytest.mark.django_db(transaction=True)
def test_pipelined_inserts_share_one_commit_and_one_change(published):
    outcomes = services.record_insert_each(
        items=[
            (METRICS, row("a", 1, id="a")),
            (ALERTS, {"id": "al", "metric": "a", "threshold": 1, "timestamp": 2}),
            (METRICS, row("b", 2, id="b")),
        ]
    )
    assert [o["id"] for o in outcomes] == ["a", "al", "b"]  # type: ignore[index]
    assert outcomes[0] == selectors.record_get(bucket=METRICS, key="a")
    assert published == [{"metrics": ["a", "b"], "alerts": ["al"]}]
    assert _stored() == [("a", "a", 1.0), ("b", "b", 2.0)]


@pytest.mark.django_db(transaction=True)
def test_an_invalid_pipelined_insert_fails_alone_and_the_rest_share_a_commit(published):
    outcomes = services.record_insert_each(
        items=[(METRICS, row("a", 1, id="a")), (METRICS, {"name": "bad"}), (METRICS, row("b", 2, id="b"))]
    )
    error = outcomes[1]
    assert isinstance(error, StoreError) and error.code == VALIDATION_ERROR
    assert [outcomes[0]["id"], outcomes[2]["id"]] == ["a", "b"]  # type: ignore[index]
    assert published == [{"metrics": ["a", "b"]}]
    assert _stored() == [("a", "a", 1.0), ("b", "b", 2.0)]


@pytest.mark.django_db(transaction=True)
def test_a_pipelined_insert_failing_in_the_database_fails_alone(published):
    services.record_insert(bucket=METRICS, data=row("taken", 0, id="k"))
    published.clear()
    # The batch is rolled back whole and written again one insert at a time.
    outcomes = services.record_insert_each(
        items=[
            (METRICS, row("a", 1, id="a")),
            (METRICS, row("dup", 9, id="k")),
            (METRICS, row("b", 2, id="b")),
            (METRICS, row("again", 3, id="b")),
        ]
    )
    for index in (1, 3):
        error = outcomes[index]
        assert isinstance(error, StoreError) and error.code == CONFLICT, error
    assert (outcomes[1].details, outcomes[3].details) == (  # type: ignore[union-attr]
        {"bucket": "metrics", "key": "k"},
        {"bucket": "metrics", "key": "b"},
    )
    assert [outcomes[0]["id"], outcomes[2]["id"]] == ["a", "b"]  # type: ignore[index]
    assert published == [{"metrics": ["a"]}, {"metrics": ["b"]}]
    assert _stored() == [("k", "taken", 0.0), ("a", "a", 1.0), ("b", "b", 2.0)]
    assert outcomes[2] == selectors.record_get(bucket=METRICS, key="b")


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_publishes_nothing(published):
    services.record_insert(bucket=METRICS, data=row("k", id="k"))
    published.clear()
    with pytest.raises(StoreError):
        services.transaction_run(
            operations=[
                op("insert", data=row("a", id="a")),
                op("update", key="k", data={"value": 9}),
                op("insert", data={}),
            ]
        )
    with pytest.raises(StoreError):
        services.record_insert(bucket=METRICS, data=row("dup", id="k"))
    assert published == []
    # The next committed write is reported alone.
    services.record_insert(bucket=METRICS, data=row("b", id="b"))
    assert published == [{"metrics": ["b"]}]


@pytest.mark.django_db(transaction=True)
def test_clear_publishes_the_whole_bucket(published):
    services.record_insert(bucket=METRICS, data=row("a"))
    services.record_insert(bucket=ALERTS, data={"metric": "a", "threshold": 1, "timestamp": 1})
    published.clear()
    assert services.bucket_clear(bucket=METRICS) == {"cleared": True}
    assert published == [{"metrics": None}]
    assert Metric.objects.count() == 0
    assert Alert.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_clear_and_writes_in_one_transaction_publish_once(published):
    with transaction.atomic():
        services.record_insert(bucket=METRICS, data=row("a", id="a"))
        services.bucket_clear(bucket=METRICS)
        services.record_insert(bucket=METRICS, data=row("b", id="b"))
    assert published == [{"metrics": None}]


@pytest.mark.django_db(transaction=True)
def test_failed_service_in_a_savepoint_then_committed_write_publishes_once(published):
    existing = services.record_insert(bucket=METRICS, data=row("x", id="x"))
    published.clear()
    with transaction.atomic():
        with pytest.raises(StoreError):
            # record_insert's atomic() is a savepoint here; the conflict rolls it back.
            services.record_insert(bucket=METRICS, data=row("x again", id="x"))
        y = services.record_insert(bucket=METRICS, data=row("y", id="y"))
        assert published == []
    assert published == [{"metrics": ["y"]}]
    assert selectors.record_all(bucket=METRICS) == [existing, y]


@pytest.mark.django_db(transaction=True)
def test_savepoint_rolled_back_before_any_other_write_publishes_once(published):
    class Abort(Exception):
        pass

    with transaction.atomic():
        with pytest.raises(Abort), transaction.atomic():
            services.record_insert(bucket=METRICS, data=row("x", id="x"))
            raise Abort
        services.record_insert(bucket=METRICS, data=row("y", id="y"))
    assert published == [{"metrics": ["y"]}]
    assert [r["id"] for r in selectors.record_all(bucket=METRICS)] == ["y"]


@pytest.mark.django_db(transaction=True)
def test_savepoint_rolled_back_between_writes_publishes_once(published):
    class Abort(Exception):
        pass

    with transaction.atomic():
        services.record_insert(bucket=METRICS, data=row("a", id="a"))
        with pytest.raises(Abort), transaction.atomic():
            services.record_insert(bucket=METRICS, data=row("x", id="x"))
            raise Abort
        services.record_insert(bucket=METRICS, data=row("c", id="c"))
    assert len(published) == 1
    # The rolled-back key may be listed too: receivers re-evaluate, so
    # over-reporting is harmless, missing a change is not.
    assert {"a", "c"} <= set(published[0]["metrics"]) <= {"a", "c", "x"}
    assert [r["id"] for r in selectors.record_all(bucket=METRICS)] == ["a", "c"]


@pytest.mark.django_db(transaction=True)
def test_whole_transaction_rolled_back_publishes_nothing(published):
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        services.record_insert(bucket=METRICS, data=row("a", id="a"))
        services.bucket_clear(bucket=ALERTS)
        raise Abort
    assert published == []
    # A later transaction starts a fresh change set.
    with transaction.atomic():
        services.record_insert(bucket=METRICS, data=row("b", id="b"))
    assert published == [{"metrics": ["b"]}]


@pytest.mark.django_db(transaction=True)
def test_writes_outside_the_services_are_published(published):
    """The admin or a shell saves through the models: autocommit publishes at once."""
    metric = Metric.objects.create(name="cpu", value=1, unit="", timestamp=1)
    assert published == [{"metrics": [metric.key]}]
    metric.value = 2
    metric.save()
    metric.delete()
    assert published == [{"metrics": [metric.key]}] * 3


@pytest.mark.django_db
def test_published_on_commit_with_captured_callbacks(published, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.transaction_run(operations=[op("insert", data=row("a", id="a")), op("insert", data=row("b", id="b"))])
        assert published == []
    assert len(callbacks) == 1
    assert published == [{"metrics": ["a", "b"]}]


@pytest.mark.django_db(transaction=True)
def test_the_fenced_on_commit_layout_is_still_django_s():
    """metrics.changes reads Django's private run_on_commit entries to know
    whether a transaction's change set is still scheduled; this fails when a
    Django upgrade changes that layout."""
    import django
    from django.db import connection

    from metrics import changes

    assert django.VERSION[:2] == changes.RUN_ON_COMMIT_CHECKED_WITH
    with transaction.atomic():
        services.record_insert(bucket=METRICS, data=row("x", id="fence"))
        [(savepoint_ids, callback, robust)] = connection.run_on_commit
        pending = connection._dashboard_changes
        assert callback == pending.publish and changes._scheduled(pending)
        assert isinstance(savepoint_ids, set) and robust is False


# --- the derived figures of many inserts ---------------------------------------------


def _derived_writes(queries: list[dict]) -> list[str]:
    from metrics import derived

    return [
        q["sql"]
        for q in queries
        if q["sql"].startswith("INSERT INTO") and (derived.STATS in q["sql"] or derived.ROLLUP in q["sql"])
    ]


@pytest.mark.django_db(transaction=True)
def test_a_transaction_s_inserts_update_the_figures_and_tiers_in_one_upsert_each():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from metrics import derived

    readings = [row("a", 1, timestamp=1_000), row("b", 5, timestamp=2_000), row("a", 3, timestamp=61_000)]
    with CaptureQueriesContext(connection) as captured:
        services.transaction_run(operations=[op("insert", data=data) for data in readings])
    upserts = _derived_writes(captured.captured_queries)
    assert len(upserts) == 2, upserts
    assert derived.stored_stats() == {"a": (2, 4.0, 1.0, 3.0, 3.0, "%"), "b": (1, 5.0, 5.0, 5.0, 5.0, "%")}
    assert derived.stored_rollups([10_000, 60_000]) == {
        ("a", 10_000, 0): (1, 1.0, 1.0, 1.0),
        ("a", 10_000, 60_000): (1, 3.0, 3.0, 3.0),
        ("a", 60_000, 0): (1, 1.0, 1.0, 1.0),
        ("a", 60_000, 60_000): (1, 3.0, 3.0, 3.0),
        ("b", 10_000, 0): (1, 5.0, 5.0, 5.0),
        ("b", 60_000, 0): (1, 5.0, 5.0, 5.0),
    }


@pytest.mark.django_db(transaction=True)
def test_reads_and_deletes_in_a_transaction_see_the_inserts_before_them():
    # The gathered inserts are added before any other operation, which may
    # read the figures (count) or subtract from them (a delete of one of them).
    from metrics import derived

    result = services.transaction_run(
        operations=[
            op("insert", data=row("a", 1, id="x")),
            op("insert", data=row("a", 9, id="y")),
            op("delete", key="y"),
            op("count"),
            op("insert", data=row("a", 4, id="z")),
        ]
    )
    assert result["results"][3] == {"index": 3, "data": 1}
    assert derived.stored_stats() == derived.recomputed_stats() == {"a": (2, 5.0, 1.0, 4.0, 4.0, "%")}


@pytest.mark.django_db(transaction=True)
def test_a_failed_transaction_leaves_no_gathered_figures_behind():
    from metrics import derived

    with pytest.raises(StoreError):
        services.transaction_run(operations=[op("insert", data=row("a", 1)), op("update", key="missing", data={})])
    services.record_insert(bucket=METRICS, data=row("b", 2))
    assert derived.stored_stats() == {"b": (1, 2.0, 2.0, 2.0, 2.0, "%")}


@pytest.mark.django_db(transaction=True)
def test_a_savepoint_rolled_back_inside_a_deferred_block_takes_its_readings_with_it():
    from metrics import derived

    with transaction.atomic(), derived.deferred():
        Metric.objects.create(name="kept", value=1, unit="%", timestamp=1)
        with pytest.raises(RuntimeError), transaction.atomic():  # a savepoint
            Metric.objects.create(name="gone", value=2, unit="%", timestamp=2)
            raise RuntimeError("rolled back alone")
        Metric.objects.create(name="kept", value=3, unit="%", timestamp=3)
    assert derived.stored_stats() == derived.recomputed_stats() == {"kept": (2, 4.0, 1.0, 3.0, 3.0, "%")}
    assert set(derived.stored_rollups()) == {("kept", res, 0) for res in derived.TIERS}


# --- new readings with server-made keys share one multi-row INSERT ---------------


def _reading_inserts(queries: list[dict]) -> list[str]:
    table = Metric._meta.db_table
    return [q["sql"] for q in queries if q["sql"].startswith(f'INSERT INTO "{table}"')]


def _same_record(record: dict) -> bool:
    return record == selectors.record_get(bucket=METRICS, key=record["id"])


@pytest.mark.django_db(transaction=True)
def test_a_transaction_s_new_readings_are_written_by_one_statement_per_run(published):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from metrics import derived

    operations = [
        op("insert", data=row("a", 1)),
        op("insert", data=row("b", 2, unit=None)),
        op("insert", data=row("c", 3, id="mine")),  # a client's key is written alone (it may be taken)
        op("insert", data=row("a", 4)),
        op("count", filter={"name": "a"}),  # sees the readings before it
        op("insert", data=row("d", 5)),
    ]
    with CaptureQueriesContext(connection) as captured:
        result = services.transaction_run(operations=operations)
    assert len(_reading_inserts(captured.captured_queries)) == 4  # [a, b], mine, [a], [d]
    records = [item["data"] for item in result["results"]]
    assert [item["index"] for item in result["results"]] == list(range(6))
    assert records[4] == 2
    written = [records[i] for i in (0, 1, 2, 3, 5)]
    assert [(r["name"], r["value"], r["unit"], r["_version"]) for r in written] == [
        ("a", 1, "%", 1),
        ("b", 2, "", 1),
        ("c", 3, "%", 1),
        ("a", 4, "%", 1),
        ("d", 5, "%", 1),
    ]
    assert all(_same_record(r) for r in written)
    # Insertion order is the operations' order; the keys are uuids.
    assert [key for key, _name, _value in _stored()] == [r["id"] for r in written]
    assert published == [{"metrics": sorted(r["id"] for r in written)}]
    assert derived.stored_stats() == derived.recomputed_stats()
    assert derived.stored_stats()["a"] == (2, 5.0, 1.0, 4.0, 4.0, "%")


@pytest.mark.django_db(transaction=True)
def test_pipelined_new_readings_share_one_statement(published):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    alert = {"id": "al", "metric": "a", "threshold": 1, "timestamp": 2}
    items = [(METRICS, row("a", 1)), (METRICS, row("b", 2)), (ALERTS, alert), (METRICS, row("a", 3))]
    with CaptureQueriesContext(connection) as captured:
        outcomes = services.record_insert_each(items=items)
    assert len(_reading_inserts(captured.captured_queries)) == 2  # [a, b] and [a]; the alert has its own table
    readings = [outcomes[i] for i in (0, 1, 3)]
    assert [(r["name"], r["value"]) for r in readings] == [("a", 1), ("b", 2), ("a", 3)]  # type: ignore[index]
    assert all(_same_record(r) for r in readings)  # type: ignore[arg-type]
    assert outcomes[2] == selectors.record_get(bucket=ALERTS, key="al")
    assert published == [{"metrics": sorted(r["id"] for r in readings), "alerts": ["al"]}]  # type: ignore[index]
    # The alert saw the reading before it, as with one save at a time.
    from alerting import selectors as alert_selectors

    assert [(s["id"], s["state"], s["value"]) for s in alert_selectors.alert_status()] == [("al", "firing", 3)]


@pytest.mark.django_db(transaction=True)
def test_a_multi_row_insert_refused_by_the_database_runs_the_transaction_again_one_at_a_time(published, monkeypatch):
    from django.db import DatabaseError
    from django.db.models import QuerySet

    from metrics import derived

    attempts: list[list[str]] = []

    def refusing(queryset, instances, *args, **kwargs):
        attempts.append([instance.name for instance in instances])
        raise DatabaseError("refused")

    monkeypatch.setattr(QuerySet, "bulk_create", refusing)
    result = services.transaction_run(operations=[op("insert", data=row("a", 1)), op("insert", data=row("b", 2))])
    assert attempts == [["a", "b"]]
    records = [item["data"] for item in result["results"]]
    assert [(r["name"], r["value"]) for r in records] == [("a", 1), ("b", 2)]
    assert [key for key, _name, _value in _stored()] == [r["id"] for r in records]
    assert published == [{"metrics": sorted(r["id"] for r in records)}]  # the failed attempt published nothing
    assert derived.stored_stats() == derived.recomputed_stats()


def test_every_save_receiver_of_readings_is_one_the_multi_row_insert_stands_in_for():
    # services._insert_many writes readings without Model.save and does what
    # these receivers do; a new receiver must be added there too.
    from django.db.models.signals import post_save, pre_save

    def receivers(signal) -> set[str]:
        sync, asynchronous = signal._live_receivers(Metric)  # Django 5.2's layout; a change fails here
        return {f"{r.__module__}.{r.__qualname__}" for r in [*sync, *asynchronous]}

    assert receivers(pre_save) == {"metrics.derived._before_save"}
    assert receivers(post_save) == {
        "metrics.derived._after_save",
        "metrics.changes._on_save",
        "alerting.receivers._metric_saved",
    }
