"""Retention of alert transitions: the history is kept until it is old, and
never while the webhook still has to send it."""

from __future__ import annotations

import time

from django.db import transaction

from .models import AlertTransition

DEFAULT_BATCH = 5000


def prune_transitions(*, older_than_ms: float, now_ms: float | None = None, batch: int = DEFAULT_BATCH) -> int:
    """Deletes transitions that happened more than `older_than_ms` before now
    and are not waiting for the webhook, `batch` rows per transaction (oldest
    first, through the primary key). Returns how many were deleted."""
    if older_than_ms < 0:
        raise ValueError("older_than_ms must not be negative")
    if batch < 1:
        raise ValueError("batch must be positive")
    cutoff = (now_ms if now_ms is not None else time.time() * 1000) - older_than_ms
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(
                AlertTransition.objects.filter(at__lt=cutoff, pending=False)
                .order_by("id")
                .values_list("id", flat=True)[:batch]
            )
            if ids:
                AlertTransition.objects.filter(id__in=ids).delete()
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
