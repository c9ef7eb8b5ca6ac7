"""Signals sent inside the writing transaction by the bulk paths, so that
tables kept in step with a bucket (alert states) can follow in the same
transaction: rows removed without per-row model signals (`store.clear`'s one
DELETE, `prune_metrics`' batches), and readings added in a batch. Single-row
writes are covered by the model signals."""

from django.dispatch import Signal

# Sent with sender=<the bucket's model> and `names`: for Metric, the reading
# names that lost rows, or None when every name may have (a clear); for
# Alert, None (every alert is gone). The rows are already deleted.
rows_removed_in_bulk = Signal()

# Sent by metrics.derived when the new readings of a `deferred()` block (a
# store.transaction, pipelined inserts, an ingest batch) are added to the
# per-name figures, inside the writing transaction, with `names`: their names,
# sorted; and by the services' multi-row insert outside such a block.
# Readings saved one at a time outside such a block send post_save only.
readings_added_in_bulk = Signal()
