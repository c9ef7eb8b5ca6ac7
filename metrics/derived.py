"""Tables derived from the raw readings, kept right in the writer's transaction.

Two kinds, both maintained from each change instead of recomputed from the
whole bucket (docs/history.md):
- `MetricNameStats`: per name the count, sum, min, max and the newest reading
  by insertion order (`metric-stats`, `metric-count`).
- `MetricRollup`: per name and step-aligned time bucket of each resolution in
  TIERS, the count, sum, min and max of the readings (`metric-series`).

A new reading is one upsert per table. A deleted (or the old side of an
updated) reading subtracts its count and sum; a min or max it may have been
is repaired through an index on (name, value) for the name, or on
(name, timestamp) for one bucket, never by scanning the bucket. Every write
path comes here: the model signals (services, the admin, a shell), the bulk
paths (`clear`, `prune_raw`) directly. `QuerySet.update()`, `bulk_create()`
and raw SQL bypass model signals: `rebuild_aggregates` recomputes from the
readings.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection

from .models import Metric, MetricHorizon, MetricNameStats, MetricRollup
from .signals import readings_added_in_bulk

# Bucket sizes in ms, finest first; each divides the next, so a coarse bucket
# is exactly a set of finer ones.
TIERS: tuple[int, ...] = (10_000, 60_000, 600_000, 3_600_000, 86_400_000)
TIER_NAMES: dict[int, str] = {10_000: "10s", 60_000: "1m", 600_000: "10m", 3_600_000: "1h", 86_400_000: "1d"}
# Readings further than this from the epoch (about 285,000 years) are kept
# and counted, but not bucketed: float arithmetic is no longer exact there.
MAX_BUCKETED_MS = 2**53
RAW = 0  # MetricHorizon's resolution for the raw readings


def bucket_start(timestamp: float, resolution: int) -> int:
    """Start of the aligned bucket holding `timestamp`; exact integer
    arithmetic (a float division could round a timestamp into the next bucket)."""
    return (math.floor(timestamp) // resolution) * resolution


def bucketed(timestamp: float) -> bool:
    return -MAX_BUCKETED_MS < timestamp < MAX_BUCKETED_MS


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


# Table and column names come from the models, never from input.
METRIC = Metric._meta.db_table
STATS = MetricNameStats._meta.db_table
ROLLUP = MetricRollup._meta.db_table
HORIZON = MetricHorizon._meta.db_table


def _greatest() -> str:
    # Two-argument max: SQLite's scalar MAX, PostgreSQL's GREATEST.
    return "GREATEST" if connection.vendor == "postgresql" else "MAX"


def _for_update() -> str:
    # SQLite has one writer at a time already; PostgreSQL needs the row lock
    # so that two processes' repairs of one name do not interleave.
    return " FOR UPDATE" if connection.vendor == "postgresql" else ""


@dataclass(frozen=True, slots=True)
class Reading:
    seq: int
    name: str
    value: float
    unit: str
    timestamp: float


# --- one reading at a time (model signals) --------------------------------------


def _least_greatest(vendor: str) -> tuple[str, str]:
    return ("LEAST", "GREATEST") if vendor == "postgresql" else ("MIN", "MAX")


@functools.lru_cache(maxsize=256)
def _stats_upsert(vendor: str, rows: int) -> str:
    """Adds readings of `rows` names to their figures (built once per shape:
    it runs on every insert)."""
    least, greatest = _least_greatest(vendor)
    newer = f"excluded.last_seq > {STATS}.last_seq"
    return (
        f"INSERT INTO {STATS} (name, count, sum, min, max, last_seq, last_value, last_unit) "
        f"VALUES {', '.join(['(%s, %s, %s, %s, %s, %s, %s, %s)'] * rows)} ON CONFLICT (name) DO UPDATE SET "
        f"count = {STATS}.count + excluded.count, sum = {STATS}.sum + excluded.sum, "
        f"min = {least}({STATS}.min, excluded.min), max = {greatest}({STATS}.max, excluded.max), "
        f"last_seq = CASE WHEN {newer} THEN excluded.last_seq ELSE {STATS}.last_seq END, "
        f"last_value = CASE WHEN {newer} THEN excluded.last_value ELSE {STATS}.last_value END, "
        f"last_unit = CASE WHEN {newer} THEN excluded.last_unit ELSE {STATS}.last_unit END"
    )


@functools.lru_cache(maxsize=256)
def _tiers_upsert(vendor: str, rows: int) -> str:
    """Adds readings to `rows` tier buckets."""
    least, greatest = _least_greatest(vendor)
    return (
        f"INSERT INTO {ROLLUP} (name, resolution, start, count, sum, min, max) "
        f"VALUES {', '.join(['(%s, %s, %s, %s, %s, %s, %s)'] * rows)} "
        f"ON CONFLICT (name, resolution, start) DO UPDATE SET "
        f"count = {ROLLUP}.count + excluded.count, sum = {ROLLUP}.sum + excluded.sum, "
        f"min = {least}({ROLLUP}.min, excluded.min), max = {greatest}({ROLLUP}.max, excluded.max)"
    )


# Rows per upsert statement: within SQLite's and PostgreSQL's limits on
# parameters (7 or 8 a row), and at most this many statement texts to cache.
ROWS_PER_STATEMENT = 256


def reading_added(reading: Reading) -> None:
    """Adds a stored reading to the per-name figures and every tier: one
    upsert each, or, inside `deferred()`, at the end of the block."""
    if deferring():
        connection._derived_pending.append(reading)  # type: ignore[attr-defined]
    else:
        readings_added([reading])


def readings_inserted(readings: list[Reading]) -> None:
    """New readings written without Model.save (the services' multi-row
    insert): what the save signals' receivers do for each, for all of them.
    Inside `deferred()` they join the block's readings; otherwise they are
    added now, and the tables that follow each name's newest reading are told
    through `readings_added_in_bulk`."""
    if deferring():
        connection._derived_pending.extend(readings)  # type: ignore[attr-defined]
    else:
        _added_together(readings)


def readings_added(readings: list[Reading]) -> None:
    """Adds stored readings to the per-name figures and every tier, summed per
    name and per tier bucket first: one upsert per table (per 256 rows)."""
    stats: dict[str, list[Any]] = {}
    buckets: dict[tuple[str, int, int], list[Any]] = {}
    for r in readings:
        figures = stats.get(r.name)
        if figures is None:
            stats[r.name] = [r.name, 1, r.value, r.value, r.value, r.seq, r.value, r.unit]
        else:
            _fold(figures, 1, r.value)
            if r.seq > figures[5]:
                figures[5:8] = [r.seq, r.value, r.unit]
        if not bucketed(r.timestamp):
            continue
        floor = math.floor(r.timestamp)
        for res in TIERS:
            key = (r.name, res, (floor // res) * res)
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = [*key, 1, r.value, r.value, r.value]
            else:
                _fold(bucket, 3, r.value)
    stats_rows, bucket_rows = list(stats.values()), list(buckets.values())
    with connection.cursor() as cursor:
        for chunk in _chunks(stats_rows):
            cursor.execute(_stats_upsert(connection.vendor, len(chunk)), _flat(chunk))
        for chunk in _chunks(bucket_rows):
            cursor.execute(_tiers_upsert(connection.vendor, len(chunk)), _flat(chunk))


def _fold(figures: list[Any], at: int, value: float) -> None:
    """Adds one reading's value to the count, sum, min and max at figures[at:at + 4]."""
    figures[at] += 1
    figures[at + 1] += value
    figures[at + 2] = min(figures[at + 2], value)
    figures[at + 3] = max(figures[at + 3], value)


def _chunks(rows: list[list[Any]]) -> Iterator[list[list[Any]]]:
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]


def _flat(rows: list[list[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside a transaction: readings the model signals add are gathered and
    added when the block ends, in one upsert per table for all of them
    instead of two per reading (a store.transaction, pipelined inserts, an
    ingest batch). Anything that subtracts or reads the figures within the
    block calls `flush()` first. Leaving the block by an exception drops
    them: the transaction around it is being rolled back. Readings saved
    inside a savepoint opened within the block are added at once instead:
    that savepoint may be rolled back alone, and take them with it."""
    if getattr(connection, "_derived_pending", None) is not None:
        yield  # nested: the outer block adds them
        return
    connection._derived_pending = []  # type: ignore[attr-defined]
    connection._derived_depth = _savepoints()  # type: ignore[attr-defined]
    try:
        yield
        flush()
    finally:
        connection._derived_pending = None  # type: ignore[attr-defined]


def flush() -> None:
    """Adds the readings `deferred()` has gathered so far."""
    pending: list[Reading] | None = getattr(connection, "_derived_pending", None)
    if pending:
        readings = pending[:]
        pending.clear()
        _added_together(readings)


def _added_together(readings: list[Reading]) -> None:
    readings_added(readings)
    # Tables that follow each name's newest reading (alert states) are
    # brought up to date once per name here, not once per reading.
    readings_added_in_bulk.send(sender=Metric, names=sorted({r.name for r in readings}))


def deferring() -> bool:
    """True inside a `deferred()` block, outside any savepoint opened within
    it: new readings are added at its end (and `readings_added_in_bulk` sent
    then)."""
    if getattr(connection, "_derived_pending", None) is None:
        return False
    return _savepoints() == connection._derived_depth  # type: ignore[attr-defined]


def _savepoints() -> int:
    # Django notes an atomic block nested without a savepoint as None.
    return sum(1 for sid in connection.savepoint_ids if sid is not None)


def reading_removed(reading: Reading) -> None:
    """Takes a reading that is no longer stored (deleted, or the old side of
    an update, already written) out of the per-name figures and every tier."""
    flush()
    with connection.cursor() as cursor:
        _stats_subtract(cursor, reading.name, 1, reading.value, reading.value, reading.value, {reading.seq})
        if bucketed(reading.timestamp):
            for res in TIERS:
                _rollup_subtract(
                    cursor,
                    reading.name,
                    res,
                    bucket_start(reading.timestamp, res),
                    1,
                    reading.value,
                    reading.value,
                    reading.value,
                )


def _stats_subtract(
    cursor: Any, name: str, count: int, total: float, low: float, high: float, seqs: set[int] | None
) -> None:
    """Removes `count` readings of `name` (sum `total`, extremes `low` and
    `high`, row ids `seqs` or None when not listed) from its figures; the rows
    must already be gone."""
    cursor.execute(f"SELECT count, sum, min, max, last_seq FROM {STATS} WHERE name = %s{_for_update()}", [name])
    row = cursor.fetchone()
    if row is None:
        return
    left = row[0] - count
    if left <= 0:
        cursor.execute(f"DELETE FROM {STATS} WHERE name = %s", [name])
        return
    new_min, new_max, last_seq = row[2], row[3], row[4]
    metric = _q(METRIC)
    if low <= new_min:
        cursor.execute(f"SELECT MIN(value) FROM {metric} WHERE name = %s", [name])
        new_min = cursor.fetchone()[0]
    if high >= new_max:
        cursor.execute(f"SELECT MAX(value) FROM {metric} WHERE name = %s", [name])
        new_max = cursor.fetchone()[0]
    if new_min is None or new_max is None:  # no rows left (a bulk delete, or a bypassed write)
        cursor.execute(f"DELETE FROM {STATS} WHERE name = %s", [name])
        return
    assignments = "count = %s, sum = sum - %s, min = %s, max = %s"
    params: list[Any] = [left, total, new_min, new_max]
    if seqs is None or last_seq in seqs:
        cursor.execute(f"SELECT seq, value, unit FROM {metric} WHERE name = %s ORDER BY seq DESC LIMIT 1", [name])
        newest = cursor.fetchone()
        if newest is None:  # a bulk delete took every row first; its other signals follow
            cursor.execute(f"DELETE FROM {STATS} WHERE name = %s", [name])
            return
        assignments += ", last_seq = %s, last_value = %s, last_unit = %s"
        params += list(newest)
    cursor.execute(f"UPDATE {STATS} SET {assignments} WHERE name = %s", [*params, name])


def _rollup_subtract(
    cursor: Any, name: str, res: int, start: int, count: int, total: float, low: float, high: float
) -> None:
    key = [name, res, start]
    cursor.execute(
        f"SELECT count, min, max FROM {ROLLUP} WHERE name = %s AND resolution = %s AND start = %s{_for_update()}", key
    )
    row = cursor.fetchone()
    if row is None:
        return
    left = row[0] - count
    if left <= 0:
        cursor.execute(f"DELETE FROM {ROLLUP} WHERE name = %s AND resolution = %s AND start = %s", key)
        return
    new_min, new_max = row[1], row[2]
    if low <= new_min or high >= new_max:
        # The bucket's remaining readings, through the (name, timestamp) index.
        cursor.execute(
            f"SELECT MIN(value), MAX(value) FROM {_q(METRIC)} WHERE name = %s AND timestamp >= %s AND timestamp < %s",
            [name, float(start), float(start + res)],
        )
        found = cursor.fetchone()
        if found[0] is not None:
            # Readings pruned from raw still count in an old bucket: its
            # extremes can only be repaired from what raw still holds.
            new_min = found[0] if low <= new_min else new_min
            new_max = found[1] if high >= new_max else new_max
    cursor.execute(
        f"UPDATE {ROLLUP} SET count = %s, sum = sum - %s, min = %s, max = %s "
        f"WHERE name = %s AND resolution = %s AND start = %s",
        [left, total, new_min, new_max, *key],
    )


def stored_reading(seq: int) -> Reading | None:
    """A reading as the database holds it now (locked on PostgreSQL)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT seq, name, value, unit, timestamp FROM {_q(METRIC)} WHERE seq = %s{_for_update()}", [seq]
        )
        row = cursor.fetchone()
    return None if row is None else Reading(*row)


# --- bulk paths ------------------------------------------------------------------


def clear() -> None:
    """The bucket was emptied: nothing is derived, and nothing was pruned."""
    flush()
    with connection.cursor() as cursor:
        for table in (STATS, ROLLUP, HORIZON):
            cursor.execute(f"DELETE FROM {table}")


def readings_removed_in_bulk(name: str, removed: list[tuple[int, float, float]]) -> None:
    """Many readings of one name, (seq, value, timestamp), already deleted
    from raw by a prune: the per-name figures lose them; the tiers keep them
    (their own retention applies)."""
    if not removed:
        return
    flush()
    values = [value for _seq, value, _ts in removed]
    with connection.cursor() as cursor:
        _stats_subtract(
            cursor,
            name,
            len(removed),
            math.fsum(values),
            min(values),
            max(values),
            {seq for seq, _value, _ts in removed},
        )


def set_horizon(resolution: int, pruned_before: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {HORIZON} (resolution, pruned_before) VALUES (%s, %s) ON CONFLICT (resolution) "
            f"DO UPDATE SET pruned_before = {_greatest()}({HORIZON}.pruned_before, excluded.pruned_before)",
            [resolution, float(pruned_before)],
        )


def horizons(using: Any = None) -> dict[int, float]:
    """{resolution: pruned_before} for the levels that were ever pruned."""
    with (using or connection).cursor() as cursor:
        cursor.execute(f"SELECT resolution, pruned_before FROM {HORIZON}")
        return dict(cursor.fetchall())


# --- recomputation -------------------------------------------------------------


def _floor_sql(column: str) -> str:
    """SQL for floor(column) as an integer, the same on both databases."""
    if connection.vendor == "postgresql":
        return f"CAST(FLOOR({column}) AS BIGINT)"
    return f"(CAST({column} AS INTEGER) - ({column} < CAST({column} AS INTEGER)))"


def _bucket_sql(integer: str, res: int) -> str:
    # floor division on integers with `%` that truncates (both databases).
    return f"({integer} - ((({integer}) % {res} + {res}) % {res}))"


def rebuild(*, stats: bool = True, tiers: bool = True, using: Any = None) -> None:
    """Recomputes the derived tables from the raw readings. Tier buckets that
    start before the prune horizon (of raw or of a finer tier) hold readings
    that are no longer there to count, so they are kept; every later bucket
    is recomputed. Idempotent; run it in a transaction to make it atomic."""
    metric = _q(METRIC)
    known = horizons(using)
    with (using or connection).cursor() as cursor:
        if stats:
            cursor.execute(f"DELETE FROM {STATS}")
            cursor.execute(
                f"INSERT INTO {STATS} (name, count, sum, min, max, last_seq, last_value, last_unit) "
                f"{_stats_from_raw('g.newest')}"
            )
        if not tiers:
            return
        finer: int | None = None
        for res in TIERS:
            # Complete source data starts at the latest horizon of raw and of
            # every tier this one is built from.
            below = [known[level] for level in (RAW, *TIERS) if level <= res and level in known]
            keep_before = _keep_before(max(below) if below else None, res)
            where = f"start >= {keep_before}" if keep_before is not None else "1 = 1"
            cursor.execute(f"DELETE FROM {ROLLUP} WHERE resolution = %s AND {where}", [res])
            if finer is None:
                start = _bucket_sql(_floor_sql("timestamp"), res)
                source = (
                    f"SELECT name, {start} AS start, COUNT(*) AS n, SUM(value) AS total, MIN(value) AS low, "
                    f"MAX(value) AS high FROM {metric} "
                    f"WHERE timestamp > {-MAX_BUCKETED_MS} AND timestamp < {MAX_BUCKETED_MS} "
                    f"GROUP BY name, {start}"
                )
            else:
                # Each tier from the one below: exact, and far fewer rows.
                start = _bucket_sql("start", res)
                source = (
                    f"SELECT name, {start} AS start, SUM(count) AS n, SUM(sum) AS total, MIN(min) AS low, "
                    f"MAX(max) AS high FROM {ROLLUP} WHERE resolution = {finer} GROUP BY name, {start}"
                )
            filter_new = f"WHERE s.start >= {keep_before}" if keep_before is not None else ""
            cursor.execute(
                f"INSERT INTO {ROLLUP} (name, resolution, start, count, sum, min, max) "
                f"SELECT s.name, {res}, s.start, s.n, s.total, s.low, s.high FROM ({source}) s {filter_new}"
            )
            finer = res


def _stats_from_raw(*extra: str) -> str:
    """SELECT of the per-name figures recomputed from the readings: name,
    count, sum, min, max, `extra` columns, newest value and unit."""
    metric = _q(METRIC)
    columns = ", ".join(["g.name", "g.n", "g.total", "g.low", "g.high", *extra, "m.value", "m.unit"])
    return (
        f"SELECT {columns} FROM "
        f"(SELECT name, COUNT(*) AS n, SUM(value) AS total, MIN(value) AS low, MAX(value) AS high, "
        f"MAX(seq) AS newest FROM {metric} GROUP BY name) g JOIN {metric} m ON m.seq = g.newest"
    )


def _keep_before(raw_horizon: float | None, res: int) -> int | None:
    """First bucket start of tier `res` that raw still holds completely."""
    if raw_horizon is None:
        return None
    return -(-math.ceil(raw_horizon) // res) * res


def recomputed_stats() -> dict[str, tuple]:
    """{name: (count, sum, min, max, last_value, last_unit)} from raw, for checks."""
    with connection.cursor() as cursor:
        cursor.execute(_stats_from_raw())
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def stored_stats() -> dict[str, tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT name, count, sum, min, max, last_value, last_unit FROM {STATS}")
        return {row[0]: tuple(row[1:]) for row in cursor.fetchall()}


def stored_rollups(resolutions: Iterable[int] = TIERS) -> dict[tuple[str, int, int], tuple]:
    """{(name, resolution, start): (count, sum, min, max)}, for checks."""
    wanted = list(resolutions)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT name, resolution, start, count, sum, min, max FROM {ROLLUP} "
            f"WHERE resolution IN ({', '.join(['%s'] * len(wanted))})",
            wanted,
        )
        return {(r[0], r[1], r[2]): tuple(r[3:]) for r in cursor.fetchall()}


# --- model signals ---------------------------------------------------------------
# Metric.save() wraps the save and these receivers in one transaction; a
# bulk delete (the admin's, a shell's QuerySet.delete()) runs the collector,
# which loads the rows and sends post_delete inside its own transaction.


def _before_save(sender: Any, instance: Metric, **kwargs: Any) -> None:
    previous = None if instance._state.adding or instance.seq is None else stored_reading(instance.seq)
    instance._reading_before_save = previous  # type: ignore[attr-defined]


def as_reading(instance: Metric) -> Reading:
    """A saved reading's figures, as the derived tables count them."""
    return Reading(instance.seq, instance.name, float(instance.value), instance.unit or "", float(instance.timestamp))


def reading_before_save(instance: Metric) -> Reading | None:
    """The stored reading that the save of `instance` replaced (read, and
    locked on PostgreSQL, by the pre_save receiver below), or None for a new
    one. For receivers of the save signals that need the old name."""
    return getattr(instance, "_reading_before_save", None)


def _after_save(sender: Any, instance: Metric, **kwargs: Any) -> None:
    previous = reading_before_save(instance)
    if previous is not None:
        reading_removed(previous)
    reading_added(as_reading(instance))


def _after_delete(sender: Any, instance: Metric, **kwargs: Any) -> None:
    reading_removed(as_reading(instance))


def connect_model_signals() -> None:
    from django.db.models.signals import post_delete, post_save, pre_save

    pre_save.connect(_before_save, sender=Metric, dispatch_uid="dashboard-derived-before-save")
    post_save.connect(_after_save, sender=Metric, dispatch_uid="dashboard-derived-after-save")
    post_delete.connect(_after_delete, sender=Metric, dispatch_uid="dashboard-derived-after-delete")
