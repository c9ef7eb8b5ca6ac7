"""Writes to the store. Each service is one `transaction.atomic()` and returns
plain records; changes reach subscribers through `changes`, after commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction

from . import derived, selectors
from .changes import note_change, note_changes, note_saved
from .errors import CONFLICT, NOT_FOUND, StoreError
from .models import Metric
from .records import Record, from_instance
from .schema import BUCKETS, BucketSchema, validate_insert, validate_update
from .signals import rows_removed_in_bulk

METRICS = BUCKETS["metrics"]


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def _insert(bucket: BucketSchema, data: dict[str, Any]) -> Record:
    return _insert_valid(bucket, validate_insert(bucket, data))


def _insert_valid(bucket: BucketSchema, columns: dict[str, Any]) -> Record:
    instance = bucket.model(**columns)
    try:
        instance.save(force_insert=True)
    except IntegrityError:
        # The only unique column is the key. Raising aborts the surrounding
        # atomic block, so PostgreSQL's failed-transaction state never leaks.
        key = columns["key"]
        raise StoreError(
            CONFLICT,
            f'Record with key "{key}" already exists in bucket "{bucket.name}"',
            {"bucket": bucket.name, "key": key},
        ) from None
    return _saved(bucket, instance)


class _BatchFailed(Exception):
    """A multi-row insert failed in the database: which row did is unknown."""


def _batchable(bucket: BucketSchema, data: Any) -> bool:
    """A new reading whose key the server makes: it can share a multi-row
    INSERT with others (no key a client chose can be taken; alerts' own save
    receivers need Model.save)."""
    return (
        bucket.model is Metric
        and isinstance(data, dict)
        and data.get(bucket.key_field) is None
        and connection.features.can_return_rows_from_bulk_insert
    )


def _insert_many(rows: list[dict[str, Any]]) -> list[Record]:
    """Validated new readings (server-made keys) in one multi-row INSERT, the
    work of Model.save's receivers done for all of them at once: one
    statement instead of one per reading (a store.transaction of a
    collector's readings, an ingest batch). The receivers are those of
    metrics.derived, metrics.changes and alerting; a test lists every
    receiver of Metric's save signals, so that a new one is added here too."""
    instances = [Metric(**columns) for columns in rows]
    for instance in instances:
        instance.stamp()
    try:
        Metric.objects.bulk_create(instances)
    except DatabaseError as error:
        raise _BatchFailed from error
    derived.readings_inserted([derived.as_reading(instance) for instance in instances])
    note_changes(METRICS.name, [i.key for i in instances], {i.name for i in instances})
    return [_saved(METRICS, instance) for instance in instances]


def _not_found(bucket: BucketSchema, key: Any) -> StoreError:
    return StoreError(NOT_FOUND, f'Record with key "{_key_text(key)}" not found in bucket "{bucket.name}"')


def _update(bucket: BucketSchema, key: Any, data: dict[str, Any]) -> Record:
    if not isinstance(key, str):
        raise _not_found(bucket, key)
    columns = validate_update(bucket, key, data)
    instance = bucket.model._default_manager.select_for_update().filter(key=key).first()
    if instance is None:
        raise _not_found(bucket, key)
    for column, value in columns.items():
        setattr(instance, column, value)
    instance.save()
    return _saved(bucket, instance)


def _saved(bucket: BucketSchema, instance: Any) -> Record:
    record = from_instance(bucket, instance)
    note_saved(bucket.name, instance.seq, record)
    return record


def _delete(bucket: BucketSchema, key: Any) -> dict[str, bool]:
    if isinstance(key, str):
        instance = bucket.model._default_manager.filter(key=key).first()
        if instance is not None:
            instance.delete()
    # Deleting a missing key is not an error, as in the reference server.
    return {"deleted": True}


def _clear(bucket: BucketSchema) -> dict[str, bool]:
    # One DELETE instead of Django's per-row collector, which would load every
    # row to send post_delete; the change is noted once for the whole bucket.
    table = connection.ops.quote_name(bucket.model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # table name from the model, not the client
    if bucket.model is Metric:
        derived.clear()
    rows_removed_in_bulk.send(sender=bucket.model, names=None)
    note_change(bucket.name, None)
    return {"cleared": True}


def record_insert(*, bucket: BucketSchema, data: dict[str, Any]) -> Record:
    with transaction.atomic():
        return _insert(bucket, data)


def record_insert_each(*, items: list[tuple[BucketSchema, dict[str, Any]]]) -> list[Record | Exception]:
    """Several independent inserts (one connection's pipelined requests): each
    is written whole or not at all, and one failing leaves the others written.

    The valid ones share one commit: on SQLite a commit writes every page the
    insert touched (the reading, its indexes, its per-name figures and tiers)
    to the log, on PostgreSQL it waits for the log flush, and one commit for
    many inserts is what keeps pipelined ingest fast (S3). They are then one
    change, published once after that commit: subscribers see the batch's
    final state, as the latest-state guarantee allows. Should a write fail
    in the database (a key taken), nothing of the batch is kept and each is
    written again in a transaction of its own, so that only that one fails.
    """
    outcomes: list[Record | Exception] = []
    valid: list[tuple[int, BucketSchema, dict[str, Any]]] = []
    for bucket, data in items:
        try:
            valid.append((len(outcomes), bucket, validate_insert(bucket, data)))
            outcomes.append(_PENDING)
        except Exception as error:  # reported to that request's sender only
            outcomes.append(error)
    if len(valid) > 1:
        try:
            with transaction.atomic(), derived.deferred():
                written = _insert_in_order([(bucket, columns, items[index][1]) for index, bucket, columns in valid])
        except Exception:
            pass  # rolled back whole; one at a time below
        else:
            for (index, _bucket, _columns), record in zip(valid, written, strict=True):
                outcomes[index] = record
            return outcomes
    for index, bucket, columns in valid:
        try:
            with transaction.atomic():
                outcomes[index] = _insert_valid(bucket, columns)
        except Exception as error:
            outcomes[index] = error
    return outcomes


def _insert_in_order(inserts: list[tuple[BucketSchema, dict[str, Any], Any]]) -> list[Record]:
    """(bucket, validated columns, the data as sent) written in order; runs of
    readings with server-made keys share one multi-row INSERT."""
    written: list[Record] = []
    run: list[dict[str, Any]] = []
    for bucket, columns, data in inserts:
        if _batchable(bucket, data):
            run.append(columns)
            continue
        if run:
            written += _insert_many(run)
            run = []
        written.append(_insert_valid(bucket, columns))
    if run:
        written += _insert_many(run)
    return written


# Placeholder while a batch is written; replaced before record_insert_each returns.
_PENDING: Any = object()


def record_update(*, bucket: BucketSchema, key: Any, data: dict[str, Any]) -> Record:
    with transaction.atomic():
        return _update(bucket, key, data)


def record_delete(*, bucket: BucketSchema, key: Any) -> dict[str, bool]:
    with transaction.atomic():
        return _delete(bucket, key)


def bucket_clear(*, bucket: BucketSchema) -> dict[str, bool]:
    with transaction.atomic():
        return _clear(bucket)


@dataclass(frozen=True)
class Operation:
    """One validated operation of a `store.transaction`."""

    op: str
    bucket: BucketSchema
    args: dict[str, Any]


TRANSACTION_OPS: dict[str, Callable[..., Any]] = {
    "get": lambda b, a: selectors.record_get(bucket=b, key=a["key"]),
    "insert": lambda b, a: _insert(b, a["data"]),
    "update": lambda b, a: _update(b, a["key"], a["data"]),
    "delete": lambda b, a: _delete(b, a["key"]),
    "where": lambda b, a: selectors.record_where(bucket=b, filter=a["filter"]),
    "findOne": lambda b, a: selectors.record_find_one(bucket=b, filter=a["filter"]),
    "count": lambda b, a: selectors.record_count(bucket=b, filter=a.get("filter")),
}


class OperationFailed(StoreError):
    """A transaction operation failed; carries its index for the log."""

    def __init__(self, index: int, error: StoreError) -> None:
        super().__init__(error.code, error.message, error.details)
        self.index = index


def transaction_run(*, operations: list[Operation]) -> dict[str, Any]:
    """All or nothing: the first failing operation rolls everything back."""
    try:
        return _transaction(operations, batched=True)
    except _BatchFailed:
        # The database refused a multi-row insert without saying which row:
        # everything was rolled back, and the transaction runs again one
        # operation at a time, so that the error names its operation.
        return _transaction(operations, batched=False)


def _transaction(operations: list[Operation], *, batched: bool) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    # New readings with server-made keys wait here and are written together
    # (_insert_many) before the next other operation, which may read them,
    # and at the end; validation still fails at the operation's own index.
    waiting: list[tuple[int, dict[str, Any]]] = []

    def write_waiting() -> None:
        if waiting:
            for (index, _columns), record in zip(waiting, _insert_many([c for _i, c in waiting]), strict=True):
                results[index]["data"] = record
            waiting.clear()

    # The inserts' per-name figures and tiers are added in one upsert per
    # table at the end; any other operation may read or subtract from them.
    with transaction.atomic(), derived.deferred():
        for index, operation in enumerate(operations):
            try:
                if batched and operation.op == "insert" and _batchable(operation.bucket, operation.args["data"]):
                    waiting.append((index, validate_insert(operation.bucket, operation.args["data"])))
                    results.append({"index": index, "data": None})
                    continue
                write_waiting()
                if operation.op != "insert":
                    derived.flush()
                data = TRANSACTION_OPS[operation.op](operation.bucket, operation.args)
            except StoreError as error:
                raise OperationFailed(index, error) from error
            results.append({"index": index, "data": data})
        write_waiting()
    return {"results": results}
