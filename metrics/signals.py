"""Signals sent inside the writing transaction by the bulk paths, which send
no per-row model signals (`store.clear`'s one DELETE, `prune_metrics`'
batches), so that tables kept in step with a bucket (alert states) can follow
in the same transaction. Single-row writes are covered by the model signals."""

from django.dispatch import Signal

# Sent with sender=<the bucket's model> and `names`: for Metric, the reading
# names that lost rows, or None when every name may have (a clear); for
# Alert, None (every alert is gone). The rows are already deleted.
rows_removed_in_bulk = Signal()
