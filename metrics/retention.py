"""Retention: deletes old raw readings and old tier buckets in bounded batches.

Each batch is its own short transaction (so no write waits behind a long
lock, on SQLite least of all) and one change for subscribers. The per-name
figures lose the pruned readings; the tiers keep them until their own, longer
retention, so old ranges stay chartable at a coarser step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction

from . import derived
from .changes import note_change
from .models import Metric
from .signals import rows_removed_in_bulk

DEFAULT_BATCH = 5000


@dataclass
class PruneReport:
    readings: int = 0
    # Tier buckets deleted, per resolution (ms).
    buckets: dict[int, int] = field(default_factory=dict)


def _names() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT name FROM {derived.STATS} ORDER BY name")
        return [row[0] for row in cursor.fetchall()]


def _candidates(name: str, cutoff: float, keep_per_name: int | None, batch: int) -> Iterator[list[int]]:
    """Row ids of `name` to delete, a batch at a time (through the
    (name, timestamp) index). Rows are read outside the deleting
    transaction; the DELETE checks the timestamp again."""
    metric = connection.ops.quote_name(derived.METRIC)
    bound = ""
    params: list[Any] = [name, cutoff]
    with connection.cursor() as cursor:
        if keep_per_name:
            # The keep_per_name-th newest reading by (timestamp, seq): only rows before it may go.
            cursor.execute(
                f"SELECT timestamp, seq FROM {metric} WHERE name = %s ORDER BY timestamp DESC, seq DESC "
                f"LIMIT 1 OFFSET %s",
                [name, keep_per_name - 1],
            )
            kept = cursor.fetchone()
            if kept is None:
                return
            bound = " AND (timestamp < %s OR (timestamp = %s AND seq < %s))"
            params += [kept[0], kept[0], kept[1]]
        after = (float("-inf"), -1)
        while True:
            cursor.execute(
                f"SELECT timestamp, seq FROM {metric} WHERE name = %s AND timestamp < %s{bound} "
                f"AND (timestamp > %s OR (timestamp = %s AND seq > %s)) ORDER BY timestamp, seq LIMIT %s",
                [*params, after[0], after[0], after[1], batch],
            )
            rows = cursor.fetchall()
            if not rows:
                return
            yield [seq for _ts, seq in rows]
            if len(rows) < batch:
                return
            after = rows[-1]


def _delete_batch(seqs: list[int], cutoff: float) -> int:
    """Deletes these rows (if still older than `cutoff`) in one transaction
    with their share of the per-name figures; one change."""
    metric = connection.ops.quote_name(derived.METRIC)
    removed: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    with transaction.atomic():
        with connection.cursor() as cursor:
            for first in range(0, len(seqs), 900):  # SQLite's bound-parameter limit
                chunk = seqs[first : first + 900]
                cursor.execute(
                    f"DELETE FROM {metric} WHERE seq IN ({', '.join(['%s'] * len(chunk))}) AND timestamp < %s "
                    f"RETURNING seq, name, value, timestamp",
                    [*chunk, cutoff],
                )
                for seq, name, value, ts in cursor.fetchall():
                    removed[name].append((seq, value, ts))
        for name, rows in removed.items():
            derived.readings_removed_in_bulk(name, rows)
        if removed:
            rows_removed_in_bulk.send(sender=Metric, names=sorted(removed))
        count = sum(len(rows) for rows in removed.values())
        if count:
            note_change("metrics", None)
    return count


def prune_raw(
    *, older_than_ms: float, keep_per_name: int | None = None, now_ms: float | None = None, batch: int = DEFAULT_BATCH
) -> int:
    """Deletes readings whose `timestamp` (the client's) is more than
    `older_than_ms` before now, except the newest `keep_per_name` of each
    name (by timestamp, then insertion). Returns how many were deleted."""
    if older_than_ms < 0:
        raise ValueError("older_than_ms must not be negative")
    if keep_per_name is not None and keep_per_name < 0:
        raise ValueError("keep_per_name must not be negative")
    if batch < 1:
        raise ValueError("batch must be positive")
    cutoff = float((now_ms if now_ms is not None else time.time() * 1000) - older_than_ms)
    deleted = 0
    pending: list[int] = []
    for name in _names():
        for seqs in _candidates(name, cutoff, keep_per_name, batch):
            pending += seqs
            while len(pending) >= batch:  # never more than `batch` rows in one transaction
                deleted += _delete_batch(pending[:batch], cutoff)
                pending = pending[batch:]
    if pending:
        deleted += _delete_batch(pending, cutoff)
    with transaction.atomic():
        derived.set_horizon(derived.RAW, cutoff)
    return deleted


def prune_tiers(
    *, retention_ms: dict[int, float | None], now_ms: float | None = None, batch: int = DEFAULT_BATCH
) -> dict[int, int]:
    """Deletes tier buckets that ended more than their tier's retention ago
    ({resolution: ms, or None to keep for ever}). Returns deletions per tier."""
    now = now_ms if now_ms is not None else time.time() * 1000
    deleted: dict[int, int] = {}
    rollup = derived.ROLLUP
    for res, keep_ms in retention_ms.items():
        if keep_ms is None:
            continue
        before = derived.bucket_start(now - keep_ms, res)
        deleted[res] = 0
        for name in _names_in_tier(res):
            while True:
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute(
                            f"DELETE FROM {rollup} WHERE (name, resolution, start) IN (SELECT name, resolution, start "
                            f"FROM {rollup} WHERE name = %s AND resolution = %s AND start < %s LIMIT %s)",
                            [name, res, before, batch],
                        )
                        count = cursor.rowcount
                    if count:
                        note_change("metrics", None)
                deleted[res] += count
                if count < batch:
                    break
        with transaction.atomic():
            derived.set_horizon(res, before)
    return deleted


def _names_in_tier(res: int) -> list[str]:
    # Every name with buckets at this resolution, not only those with
    # readings: a name whose readings were all pruned keeps its buckets.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT name FROM {derived.ROLLUP} WHERE resolution = %s", [res])
        return [row[0] for row in cursor.fetchall()]


def retention_ms_by_tier(retention: dict[str, float | None]) -> dict[int, float | None]:
    """Settings' RETENTION (seconds by level name) as {resolution ms: ms}."""
    by_tier: dict[int, float | None] = {}
    for res, name in derived.TIER_NAMES.items():
        seconds = retention.get(name)
        by_tier[res] = None if seconds is None else seconds * 1000
    return by_tier
