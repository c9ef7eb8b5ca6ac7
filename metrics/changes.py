"""Reports committed changes to the store through one signal, `records_changed`.

Every write path ends here: the services, the Django admin and a shell all
save through the models, whose post_save/post_delete signals note the change;
bulk deletes note it themselves. Changes made in one transaction are gathered
and sent once, after commit, so a transaction is one change and a rollback
sends nothing. Receivers (the realtime fan-out) run in the committing thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import Signal

from . import records

logger = logging.getLogger(__name__)

# Sent with `changes`: {bucket name: sorted list of changed keys, or None when
# the whole bucket changed (a clear, or too many keys to list)}, and `names`:
# {bucket name: sorted list of the metric names whose readings changed} for
# the buckets where every change named its metric (so that a chart of one
# name is not evaluated again for another's readings).
records_changed = Signal()

MAX_KEYS_PER_BUCKET = 100
MAX_NAMES_PER_BUCKET = 100


class ChangeSet:
    def __init__(self) -> None:
        self.buckets: dict[str, set[str] | None] = {}
        # None for a bucket some change of which named no metric.
        self.names: dict[str, set[str] | None] = {}
        # Records the services wrote, for the read cache once committed.
        self.saved: list[tuple[str, int, Any]] = []

    def add(self, bucket: str, keys: Iterable[str] | None, names: Iterable[str] | None = None) -> None:
        _merge(self.buckets, bucket, keys, MAX_KEYS_PER_BUCKET)
        _merge(self.names, bucket, names, MAX_NAMES_PER_BUCKET)

    def summary(self) -> dict[str, list[str] | None]:
        return {b: (None if keys is None else sorted(keys)) for b, keys in self.buckets.items()}

    def names_summary(self) -> dict[str, list[str]]:
        return {b: sorted(names) for b, names in self.names.items() if names is not None}

    def publish(self) -> None:
        # Cached before anyone hears of the change, so the re-evaluation it
        # triggers finds the new records instead of reading them back.
        for bucket, seq, record in self.saved:
            records.remember(bucket, seq, record)
        records_changed.send(sender=ChangeSet, changes=self.summary(), names=self.names_summary())


def _merge(into: dict[str, set[str] | None], bucket: str, items: Iterable[str] | None, limit: int) -> None:
    """Adds `items` to the bucket's set; None (unknown, or all) absorbs, and so
    does a set grown past `limit`."""
    if items is None:
        into[bucket] = None
        return
    known = into.setdefault(bucket, set())
    if known is not None:
        known.update(items)
        if len(known) > limit:
            into[bucket] = None


def note_change(bucket: str, key: str | None, names: Iterable[str] | None = None) -> None:
    """Record that `bucket` (the record `key`, or all of it) changed; `names`,
    the metric names whose readings it changed, when known."""
    note_changes(bucket, None if key is None else (key,), names)


def note_changes(bucket: str, keys: Iterable[str] | None, names: Iterable[str] | None = None) -> None:
    """`note_change` for many records at once (a multi-row insert)."""
    if not connection.in_atomic_block:
        # Autocommit: the write is already committed.
        single = ChangeSet()
        single.add(bucket, keys, names)
        single.publish()
        return
    pending: ChangeSet | None = getattr(connection, "_dashboard_changes", None)
    if pending is None or not _scheduled(pending):
        # First change of this transaction (or the previous one's set was
        # published or discarded by a rollback).
        pending = ChangeSet()
        connection._dashboard_changes = pending  # type: ignore[attr-defined]
        transaction.on_commit(pending.publish)
    pending.add(bucket, keys, names)


def note_saved(bucket: str, seq: int, record: Any) -> None:
    """A service saved `record` (validated values, exactly as they read
    back) as row `seq`, after `note_change` noted it. It is cached when the
    transaction commits. Only rows of the outermost transaction qualify: a
    savepoint rolled back alone would leave a seq that SQLite can hand to
    another row with the same version."""
    pending: ChangeSet | None = getattr(connection, "_dashboard_changes", None)
    if connection.in_atomic_block and not connection.savepoint_ids and pending is not None:
        pending.saved.append((bucket, seq, record))


# The one private Django interface used here, fenced: Django 5.2 keeps
# `connection.run_on_commit` as a list of (savepoint ids, callback, robust)
# tuples and drops those of rolled-back savepoints, which tells whether a
# pending set will still be sent. tests/metrics/test_services.py fails if the layout
# changes; at run time an unexpected layout is logged once and treated as "not
# scheduled": a new set is started, so a change may be published twice (an
# extra evaluation, never a lost or repeated push).
RUN_ON_COMMIT_CHECKED_WITH = (5, 2)
_layout_warned = False


def _scheduled(pending: ChangeSet) -> bool:
    global _layout_warned
    try:
        return any(entry[1] == pending.publish for entry in connection.run_on_commit)
    except (AttributeError, TypeError, IndexError):
        if not _layout_warned:
            _layout_warned = True
            logger.warning(
                "Django's run_on_commit layout changed (checked with Django %s): a transaction's "
                "changes may be published more than once",
                ".".join(map(str, RUN_ON_COMMIT_CHECKED_WITH)),
            )
        return False


def _on_save(sender: Any, instance: Any, **kwargs: Any) -> None:
    from .schema import BUCKET_BY_MODEL

    note_change(BUCKET_BY_MODEL[sender].name, instance.key, _names(instance))


def _names(instance: Any) -> list[str] | None:
    """The metric names a saved or deleted reading changes: its name, and on
    an update its name before (metrics.derived reads the stored row before
    each update)."""
    from .derived import reading_before_save
    from .models import Metric

    if not isinstance(instance, Metric):
        return None
    before = reading_before_save(instance)
    return [instance.name] if before is None else [instance.name, before.name]


def connect_model_signals() -> None:
    from .schema import BUCKET_BY_MODEL

    for model in BUCKET_BY_MODEL:
        post_save.connect(_on_save, sender=model, dispatch_uid=f"dashboard-save-{model.__name__}")
        post_delete.connect(_on_save, sender=model, dispatch_uid=f"dashboard-delete-{model.__name__}")
