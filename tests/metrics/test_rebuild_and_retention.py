"""The derived tables (metrics.derived) outside the writes that maintain them:
the migration that fills them from readings already stored, `rebuild_aggregates`
after a load that bypasses the model signals, and retention (`prune_metrics`,
metrics.retention) in bounded batches, raw readings and tiers each on its own
horizon. Synchronous tests; the same file runs on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from metrics import derived, retention
from metrics.changes import records_changed
from metrics.models import Metric
from realtime.queries import QueryStore, get_query

S, M, H, D = 1000, 60_000, 3_600_000, 86_400_000
TEN_S = 10_000
TEN_M = 600_000
# A day boundary (a multiple of every tier's resolution), so buckets are easy to compute by hand.
B = 19675 * D  # 2023-11-14T00:00:00Z
ALL_TIERS = (TEN_S, M, TEN_M, H, D)
assert ALL_TIERS == derived.TIERS


# --- helpers ----------------------------------------------------------------------------


def load_by_sql(rows: list[tuple[str, float, str, float]]) -> None:
    """Inserts (name, value, unit, timestamp) readings by SQL, in this order
    (so seq follows it), bypassing the model signals as a bulk load does."""
    table = connection.ops.quote_name(Metric._meta.db_table)
    first = Metric.objects.count()
    with connection.cursor() as cursor:
        cursor.executemany(
            f"INSERT INTO {table} (key, version, created_at, updated_at, name, value, unit, timestamp) "
            f"VALUES (%s, 1, 1, 1, %s, %s, %s, %s)",
            [(f"sql-{first + i}", name, value, unit, ts) for i, (name, value, unit, ts) in enumerate(rows)],
        )


def create(name: str, value: float, timestamp: float, unit: str = "") -> Metric:
    """A reading written through the model (its signals maintain the derived tables)."""
    return Metric.objects.create(name=name, value=value, unit=unit, timestamp=timestamp)


def rollups_of(readings: list[tuple[str, float, float]]) -> dict[tuple[str, int, int], tuple]:
    """The tiers of (name, value, timestamp) readings, computed here in plain
    Python: {(name, resolution, start): (count, sum, min, max)}."""
    found: dict[tuple[str, int, int], list] = {}
    for name, value, ts in readings:
        for res in ALL_TIERS:
            key = (name, res, (math.floor(ts) // res) * res)
            agg = found.setdefault(key, [0, 0.0, value, value])
            agg[0] += 1
            agg[1] += value
            agg[2] = min(agg[2], value)
            agg[3] = max(agg[3], value)
    return {key: tuple(agg) for key, agg in found.items()}


def assert_stats_close(stored: dict, expected: dict) -> None:
    """Counts and units exactly, float figures up to rounding."""
    assert set(stored) == set(expected), (stored, expected)
    for name, (count, total, low, high, last, unit) in expected.items():
        s_count, s_total, s_low, s_high, s_last, s_unit = stored[name]
        assert (s_count, s_unit) == (count, unit), (name, stored[name], expected[name])
        for mine, theirs in ((s_total, total), (s_low, low), (s_high, high), (s_last, last)):
            assert math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-9), (name, stored[name], expected[name])


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.fixture
def batches():
    """For each change published (one per committed batch), how many readings
    were stored at that moment: the receiver runs in the committing thread."""
    seen: list[int] = []

    def receiver(sender, changes, **kwargs):
        seen.append(Metric.objects.count())

    records_changed.connect(receiver, dispatch_uid="test-rebuild-retention-receiver")
    yield seen
    records_changed.disconnect(dispatch_uid="test-rebuild-retention-receiver")


def sizes(before: int, counts: list[int]) -> list[int]:
    """Readings deleted by each published batch."""
    return [a - b for a, b in zip([before, *counts], counts, strict=False)]


# --- 1. the migration fills the derived tables ------------------------------------------

# Readings stored before 0002: several names; buckets of 10 s, 1 min, 1 h and 1 day
# apart; a non-integer, a negative non-integer, a negative day-boundary and a huge timestamp.
OLD_READINGS = [
    ("cpu", 1.5, "%", B + 1_000),
    ("cpu", 2.25, "%", B + 9_999.5),
    ("cpu", 4.0, "%", B + 10_000),
    ("cpu", 0.5, "pct", B + H + 5),
    ("mem", 100.0, "MB", B + D + 61_000),
    ("mem", -3.0, "MB", -1_500.5),
    ("disk", 7.0, "GB", -D),
    ("disk", 2.0, "GB", 1e300),  # beyond derived.MAX_BUCKETED_MS: counted, in no tier
]


@pytest.mark.django_db(transaction=True)
def test_migration_0002_fills_figures_and_tiers_from_readings_stored_before_it():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    try:
        executor.migrate([("metrics", "0001_initial")])
        assert "metrics_metricnamestats" not in connection.introspection.table_names()
        load_by_sql(OLD_READINGS)

        executor = MigrationExecutor(connection)  # the graph as it is now
        executor.migrate(latest)

        assert derived.stored_stats() == {
            # count, sum, min, max, value and unit of the newest by insertion
            "cpu": (4, 8.25, 0.5, 4.0, 0.5, "pct"),
            "mem": (2, 97.0, -3.0, 100.0, -3.0, "MB"),
            "disk": (2, 9.0, 2.0, 7.0, 2.0, "GB"),
        }
        cpu_day = (4, 8.25, 0.5, 4.0)
        cpu_first_hour = (3, 7.75, 1.5, 4.0)  # the first three, 1 s to 10 s after B
        late = (1, 0.5, 0.5, 0.5)  # B + 1 h + 5 ms
        mem_new, mem_neg, disk = (1, 100.0, 100.0, 100.0), (1, -3.0, -3.0, -3.0), (1, 7.0, 7.0, 7.0)
        assert derived.stored_rollups() == {
            ("cpu", TEN_S, B): (2, 3.75, 1.5, 2.25),  # 9,999.5 ms is still in the first 10 s
            ("cpu", TEN_S, B + TEN_S): (1, 4.0, 4.0, 4.0),
            ("cpu", TEN_S, B + H): late,
            ("cpu", M, B): cpu_first_hour,
            ("cpu", M, B + H): late,
            ("cpu", TEN_M, B): cpu_first_hour,
            ("cpu", TEN_M, B + H): late,
            ("cpu", H, B): cpu_first_hour,
            ("cpu", H, B + H): late,
            ("cpu", D, B): cpu_day,
            ("mem", TEN_S, B + D + M): mem_new,  # 61 s into the day
            ("mem", M, B + D + M): mem_new,
            ("mem", TEN_M, B + D): mem_new,
            ("mem", H, B + D): mem_new,
            ("mem", D, B + D): mem_new,
            # -1,500.5 ms: floor -1,501, in the bucket that ends at 0 of every tier
            ("mem", TEN_S, -TEN_S): mem_neg,
            ("mem", M, -M): mem_neg,
            ("mem", TEN_M, -TEN_M): mem_neg,
            ("mem", H, -H): mem_neg,
            ("mem", D, -D): mem_neg,
            ("disk", TEN_S, -D): disk,
            ("disk", M, -D): disk,
            ("disk", TEN_M, -D): disk,
            ("disk", H, -D): disk,
            ("disk", D, -D): disk,
        }
        assert derived.horizons() == {}
        # What the page reads now comes from those tables.
        assert get_query("metric-count").function(QueryStore(), {}) == 8
    finally:
        MigrationExecutor(connection).migrate(latest)
    assert "metrics_metricnamestats" in connection.introspection.table_names()


# --- 2. rebuild_aggregates ----------------------------------------------------------------

LOAD = [
    ("cpu", 10.0, "%", B + 1_000),
    ("mem", 512.0, "MB", B + 2_000),
    ("cpu", 30.5, "%", B + 15_000),
    ("cpu", 20.25, "pct", B + 5_000),  # out of timestamp order: newest by insertion
    ("mem", 256.0, "MB", B - 20.5),
    ("disk", 1.0, "GB", -0.5),  # floor -1: the bucket before 0 of every tier, not the one at 0
]
LOAD_STATS = {
    "cpu": (3, 60.75, 10.0, 30.5, 20.25, "pct"),
    "mem": (2, 768.0, 256.0, 512.0, 256.0, "MB"),
    "disk": (1, 1.0, 1.0, 1.0, 1.0, "GB"),
}


@pytest.mark.django_db
def test_rebuild_aggregates_after_a_load_by_sql_makes_the_figures_right_and_is_idempotent():
    create("gone", 1.0, B)  # a name whose only reading is then deleted by SQL
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metrics_metric WHERE name = 'gone'")
    load_by_sql(LOAD)
    # The load bypassed the signals: the figures know only the deleted reading.
    assert derived.stored_stats() == {"gone": (1, 1.0, 1.0, 1.0, 1.0, "")}
    assert get_query("metric-count").function(QueryStore(), {}) == 1

    out = run("rebuild_aggregates")
    assert out.startswith("rebuilt per-name figures and 5 tiers in ") and out.endswith(" s\n")

    assert derived.stored_stats() == LOAD_STATS
    expected_tiers = rollups_of([(name, value, ts) for name, value, _unit, ts in LOAD])
    assert derived.stored_rollups() == expected_tiers
    assert ("disk", D, -D) in expected_tiers
    assert get_query("metric-count").function(QueryStore(), {}) == 6
    assert get_query("metric-stats").function(QueryStore(), {}) == [
        {"name": "cpu", "count": 3, "min": 10, "max": 30.5, "avg": 20.25, "last": 20.25, "unit": "pct"},
        {"name": "disk", "count": 1, "min": 1, "max": 1, "avg": 1, "last": 1, "unit": "GB"},
        {"name": "mem", "count": 2, "min": 256, "max": 512, "avg": 384, "last": 256, "unit": "MB"},
    ]

    run("rebuild_aggregates")
    assert (derived.stored_stats(), derived.stored_rollups()) == (LOAD_STATS, expected_tiers)
    assert run("rebuild_aggregates", "--check") == (
        f"per-name figures (3 names) and tiers ({len(expected_tiers)} buckets) match the readings\n"
    )


@pytest.mark.django_db
def test_rebuild_aggregates_check_lists_each_corrupted_row_and_fails():
    for name, value, unit, ts in LOAD:
        create(name, value, ts, unit)
    tiers = derived.stored_rollups()
    assert run("rebuild_aggregates", "--check").endswith(f"({len(tiers)} buckets) match the readings\n")

    with connection.cursor() as cursor:
        cursor.execute("UPDATE metrics_metricnamestats SET count = 9 WHERE name = 'mem'")
        cursor.execute(
            "UPDATE metrics_metricrollup SET max = 99.0 WHERE name = 'cpu' AND resolution = %s AND start = %s",
            [M, B],
        )
        cursor.execute("DELETE FROM metrics_metricrollup WHERE name = 'mem' AND resolution = %s", [D])
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("rebuild_aggregates", "--check", stdout=out)
    assert str(raised.value) == "4 derived row(s) differ from the readings"
    assert out.getvalue().splitlines() == [
        "mem: stored (9, 768.0, 256.0, 512.0, 256.0, 'MB'), from the readings (2, 768.0, 256.0, 512.0, 256.0, 'MB')",
        f"('cpu', 60000, {B}): stored (3, 60.75, 10.0, 99.0), from the readings (3, 60.75, 10.0, 30.5)",
        f"('mem', 86400000, {B - D}): stored None, from the readings (1, 256.0, 256.0, 256.0)",
        f"('mem', 86400000, {B}): stored None, from the readings (1, 512.0, 512.0, 512.0)",
    ]
    # --check wrote nothing.
    assert derived.stored_stats()["mem"][0] == 9

    run("rebuild_aggregates")
    assert (derived.stored_stats(), derived.stored_rollups()) == (LOAD_STATS, tiers)


@pytest.mark.django_db
def test_rebuild_keeps_tier_buckets_older_than_the_raw_horizon_and_recomputes_the_rest():
    now = B + 12 * H + 5 * S  # not on a bucket boundary of any tier
    cutoff = now - 7 * D
    a = ("cpu", 5.0, cutoff - 20 * D)  # pruned
    b = ("cpu", 9.0, cutoff - 1)  # pruned; shares every tier's bucket with c
    c = ("cpu", 1.0, cutoff + 1)  # kept, in the buckets that straddle the horizon
    d = ("cpu", 3.0, now - H)  # kept
    for name, value, ts in (a, b, c, d):
        create(name, value, ts, "%")
    assert derived.stored_rollups() == rollups_of([a, b, c, d])

    assert retention.prune_raw(older_than_ms=7 * D, now_ms=now, batch=10) == 2
    assert derived.horizons() == {derived.RAW: cutoff}
    assert derived.stored_rollups() == rollups_of([a, b, c, d])  # raw pruning leaves the tiers alone
    assert run("rebuild_aggregates", "--check").endswith("match the readings\n")

    # Behind the signals' back: a new reading by SQL, and a recent bucket corrupted.
    e = ("cpu", 4.0, now - 2 * H)
    load_by_sql([(e[0], e[1], "%", e[2])])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE metrics_metricrollup SET count = 50, max = 77.0 WHERE name = 'cpu' AND resolution = %s "
            "AND start = %s",
            [TEN_S, (math.floor(d[2]) // TEN_S) * TEN_S],
        )

    run("rebuild_aggregates")
    # Buckets before the horizon still count the pruned readings (a, b, and c
    # beside b); every later bucket is recomputed from raw (d, and e which only
    # the rebuild saw). Together: as if nothing had been pruned.
    assert derived.stored_rollups() == rollups_of([a, b, c, d, e])
    assert derived.stored_stats() == {"cpu": (3, 8.0, 1.0, 4.0, 4.0, "%")}
    run("rebuild_aggregates")
    assert derived.stored_rollups() == rollups_of([a, b, c, d, e])
    assert run("rebuild_aggregates", "--check").endswith("match the readings\n")


# --- 3. retention -----------------------------------------------------------------------

NOW = B + 12 * H + 5 * S  # not on a bucket boundary of any tier
OLD = NOW - 8 * D  # older than the 7 days of raw retention


def keys_left() -> list[str]:
    return list(Metric.objects.order_by("seq").values_list("key", flat=True))


def keys_of(*readings: Metric) -> list[str]:
    return [m.key for m in readings]


@pytest.mark.django_db(transaction=True)
def test_prune_raw_deletes_in_batches_of_at_most_batch_size_each_its_own_transaction(batches):
    # 7 old readings (cpu 3, mem 4) and one recent reading of each name.
    for i in range(3):
        create("cpu", float(i), OLD + i)
    cpu_new = create("cpu", 50.0, NOW - H)
    for i in range(4):
        create("mem", float(i), OLD + i)
    mem_new = create("mem", 60.0, NOW - H)
    tiers = derived.stored_rollups()
    batches.clear()

    assert retention.prune_raw(older_than_ms=7 * D, now_ms=NOW, batch=2) == 7

    assert keys_left() == keys_of(cpu_new, mem_new)
    assert derived.stored_stats() == {"cpu": (1, 50.0, 50.0, 50.0, 50.0, ""), "mem": (1, 60.0, 60.0, 60.0, 60.0, "")}
    assert derived.stored_rollups() == tiers
    assert derived.horizons() == {derived.RAW: NOW - 7 * D}
    # Every batch is one committed transaction, published once, of at most 2 rows.
    assert sorted(sizes(9, batches), reverse=True) == [2, 2, 2, 1], sizes(9, batches)


@pytest.mark.django_db(transaction=True)
def test_prune_raw_over_several_batches_leaves_the_figures_equal_to_a_recomputation(batches):
    create("cpu", 50.0, OLD, "%")  # the max
    create("cpu", 10.0, NOW - H, "%")
    create("cpu", 1.0, OLD + 1, "%")  # the min
    create("cpu", 20.0, NOW - 2 * H, "%")
    create("cpu", 30.0, OLD + 2, "pct")  # the newest by insertion
    create("mem", 0.1, OLD - D, "MB")
    create("mem", 0.2, OLD - 2 * D, "MB")  # every mem reading is old
    create("disk", 0.1, NOW, "GB")
    create("disk", 0.2, NOW - S, "GB")
    create("disk", 0.7, NOW - 9 * D, "GB")
    batches.clear()

    assert retention.prune_raw(older_than_ms=7 * D, now_ms=NOW, batch=3) == 6

    assert len(batches) == 2
    expected = {"cpu": (2, 30.0, 10.0, 20.0, 20.0, "%"), "disk": (2, 0.3, 0.1, 0.2, 0.2, "GB")}
    assert_stats_close(derived.stored_stats(), expected)
    assert_stats_close(derived.stored_stats(), derived.recomputed_stats())
    assert get_query("metric-count").function(QueryStore(), {}) == 4


@pytest.mark.django_db(transaction=True)
def test_keep_per_name_over_several_batches_keeps_exactly_the_newest_n_by_timestamp_then_seq(batches):
    t = OLD
    # cpu, newest first by (timestamp, seq): c2, c7, c5 | c3 (same timestamp as c5, inserted before), c4, c1, c6
    c1, c2, c3, c4, c5, c6, c7 = (
        create("cpu", float(i), t - age) for i, age in enumerate([50, 10, 20, 30, 20, 60, 20], start=1)
    )
    m1, m2 = create("mem", 1.0, t - 5), create("mem", 2.0, t - 6)  # fewer than 3: both kept
    d1, d2, d3, d4, d5 = (
        create("disk", float(i), ts) for i, ts in enumerate([t - 4, NOW, t - 1, t - 3, t - 2], start=1)
    )
    batches.clear()

    assert retention.prune_raw(older_than_ms=7 * D, keep_per_name=3, now_ms=NOW, batch=2) == 6

    assert keys_left() == keys_of(c2, c5, c7, m1, m2, d2, d3, d5)
    assert sorted(sizes(14, batches), reverse=True) == [2, 2, 2]
    assert_stats_close(derived.stored_stats(), derived.recomputed_stats())
    assert c1 and c3 and c4 and c6 and d1 and d4


SERIES_READINGS = [
    ("cpu", 2.0, B - 400 * D + 3 * H + 10 * S),
    ("cpu", 6.0, B - 400 * D + 3 * H + 20 * M),  # the same hour, another 10 minutes
    ("cpu", 1.0, B - 400 * D + 5 * H),
    ("cpu", 3.0, B - 10 * D + H),
    ("cpu", 8.0, NOW - H),
]


def series_query(**params) -> dict:
    return get_query("metric-series").function(QueryStore(), {"name": "cpu", **params})


@pytest.mark.django_db
def test_old_ranges_stay_chartable_from_the_tiers_after_raw_and_tier_pruning():
    for name, value, ts in SERIES_READINGS:
        create(name, value, ts, "%")
    assert retention.prune_raw(older_than_ms=7 * D, now_ms=NOW) == 4
    assert keys_left() == [Metric.objects.get(value=8.0).key]

    # The whole history at 500 points: a day per point, from the 1 d tier.
    assert series_query(points=500, **{"from": B - 401 * D, "to": NOW}) == {
        "name": "cpu",
        "unit": "%",
        "from": B - 401 * D,
        "to": NOW,
        "step": D,
        "points": [
            {"t": B - 400 * D, "count": 3, "min": 1, "max": 6, "avg": 3},
            {"t": B - 10 * D, "count": 1, "min": 3, "max": 3, "avg": 3},
            {"t": B, "count": 1, "min": 8, "max": 8, "avg": 8},
        ],
    }
    # Two days around the reading pruned 10 days ago: hours, from the 1 h tier.
    assert series_query(points=50, **{"from": B - 11 * D, "to": B - 9 * D - 1}) == {
        "name": "cpu",
        "unit": "%",
        "from": B - 11 * D,
        "to": B - 9 * D - 1,
        "step": H,
        "points": [{"t": B - 10 * D + H, "count": 1, "min": 3, "max": 3, "avg": 3}],
    }

    retention_ms = {TEN_S: 7 * D, M: 90 * D, TEN_M: 365 * D, H: None, D: None}
    assert retention.prune_tiers(retention_ms=retention_ms, now_ms=NOW) == {TEN_S: 4, M: 3, TEN_M: 3}
    # Two days 400 days ago at up to 2000 points would be a 2 min step; the
    # 1 min and 10 min tiers are pruned there, so the step is the 1 h tier's.
    assert series_query(points=2000, **{"from": B - 401 * D, "to": B - 399 * D - 1}) == {
        "name": "cpu",
        "unit": "%",
        "from": B - 401 * D,
        "to": B - 399 * D - 1,
        "step": H,
        "points": [
            {"t": B - 400 * D + 3 * H, "count": 2, "min": 2, "max": 6, "avg": 4},
            {"t": B - 400 * D + 5 * H, "count": 1, "min": 1, "max": 1, "avg": 1},
        ],
    }


def tier(res: int, readings: list[tuple[str, float, float]]) -> dict:
    return {key: agg for key, agg in rollups_of(readings).items() if key[1] == res}


@pytest.mark.django_db(transaction=True)
def test_prune_tiers_deletes_buckets_past_each_tiers_retention_and_keeps_the_forever_tiers(batches):
    edge_10s = B - 7 * D + 12 * H  # bucket_start(NOW - 7 d, 10 s): the first 10 s bucket kept
    kept_10s = ("cpu", 1.0, edge_10s)
    gone_10s = ("cpu", 2.0, edge_10s - 1)  # its bucket ended exactly 7 d before NOW's 10 s bucket
    d100 = ("cpu", 3.0, NOW - 100 * D)
    d400 = ("mem", 4.0, NOW - 400 * D)
    recent = ("mem", 5.0, NOW - S)
    readings = [kept_10s, gone_10s, d100, d400, recent]
    for name, value, ts in readings:
        create(name, value, ts)
    assert retention.prune_raw(older_than_ms=1000 * D, now_ms=NOW) == 0  # only a horizon far back
    batches.clear()

    deleted = retention.prune_tiers(
        retention_ms={TEN_S: 7 * D, M: 90 * D, TEN_M: 365 * D, H: None, D: None}, now_ms=NOW, batch=1
    )

    assert deleted == {TEN_S: 3, M: 2, TEN_M: 1}
    assert derived.stored_rollups() == {
        **tier(TEN_S, [kept_10s, recent]),
        **tier(M, [kept_10s, gone_10s, recent]),
        **tier(TEN_M, [kept_10s, gone_10s, d100, recent]),
        **tier(H, readings),
        **tier(D, readings),
    }
    assert derived.horizons() == {
        derived.RAW: NOW - 1000 * D,
        TEN_S: edge_10s,
        M: B - 90 * D + 12 * H,
        TEN_M: B - 365 * D + 12 * H,
    }
    assert len(batches) == 6  # batch=1: one change per bucket deleted
    # Raw readings are not touched by tier retention.
    assert Metric.objects.count() == 5
    assert derived.stored_stats() == derived.recomputed_stats()


# --- the prune_metrics command ---------------------------------------------------------


@pytest.fixture
def retention_settings(settings):
    settings.DASHBOARD = {
        **settings.DASHBOARD,
        "RETENTION": {"raw": 7 * 86400, "10s": 7 * 86400, "1m": 90 * 86400, "10m": 365 * 86400, "1h": None, "1d": None},
    }
    return settings


@pytest.mark.django_db
def test_prune_metrics_command_prunes_raw_then_each_tier_and_says_what_it_did(retention_settings):
    now = time.time() * 1000  # the command reads the clock; every age is days from a boundary
    readings = [
        ("cpu", 1.0, now - 400 * D),
        ("cpu", 2.0, now - 100 * D),
        ("cpu", 3.0, now - 10 * D),
        ("mem", 4.0, now - 8 * D),
        ("cpu", 5.0, now - H),
    ]
    for name, value, ts in readings:
        create(name, value, ts)
    _d400, d100, d10, mem8, recent = readings

    out = run("prune_metrics", "--keep-per-name", "1", "--batch-size", "2")

    assert out == (
        "deleted 3 metric(s) older than 7d, keeping the newest 1 per name\n"
        "tier buckets deleted: 10s: 4 older than 7d, 1m: 2 older than 90d, 10m: 1 older than 365d, "
        "1h: kept for ever, 1d: kept for ever\n"
    )
    assert sorted(Metric.objects.values_list("value", flat=True)) == [4.0, 5.0]
    assert derived.stored_stats() == {"cpu": (1, 5.0, 5.0, 5.0, 5.0, ""), "mem": (1, 4.0, 4.0, 4.0, 4.0, "")}
    assert derived.stored_rollups() == {
        **tier(TEN_S, [recent]),
        **tier(M, [d10, mem8, recent]),
        **tier(TEN_M, [d100, d10, mem8, recent]),
        **tier(H, readings),
        **tier(D, readings),
    }
    assert sorted(derived.horizons()) == [derived.RAW, TEN_S, M, TEN_M]
    assert now - 7 * D <= derived.horizons()[derived.RAW] <= time.time() * 1000 - 7 * D


@pytest.mark.django_db
def test_prune_metrics_raw_only_leaves_the_tiers_and_forever_raw_deletes_nothing(retention_settings):
    now = time.time() * 1000
    create("cpu", 1.0, now - 10 * D)
    create("cpu", 2.0, now - H)
    tiers = derived.stored_rollups()

    assert run("prune_metrics", "--raw-only", "--older-than", "12h") == "deleted 1 metric(s) older than 12h\n"
    assert derived.stored_rollups() == tiers
    assert sorted(derived.horizons()) == [derived.RAW]

    retention_settings.DASHBOARD = {
        **retention_settings.DASHBOARD,
        "RETENTION": {**retention_settings.DASHBOARD["RETENTION"], "raw": None},
    }
    assert run("prune_metrics", "--raw-only") == "raw metrics are kept for ever (DASHBOARD_RETENTION_RAW=forever)\n"
    assert list(Metric.objects.values_list("value", flat=True)) == [2.0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (("--keep-per-name", "-1"), "--keep-per-name must not be negative"),
        (("--batch-size", "0"), "--batch-size must be positive"),
        (
            ("--older-than", "7"),
            "Error: argument --older-than: invalid duration '7': expected a number and a unit "
            "(ms, s, m, h, d, w), e.g. 30s, 15m, 7d",
        ),
        (
            ("--older-than=-1d",),
            "Error: argument --older-than: invalid duration '-1d': expected a number and a "
            "unit (ms, s, m, h, d, w), e.g. 30s, 15m, 7d",
        ),
        (("--batch-size", "many"), "Error: argument --batch-size: invalid int value: 'many'"),
    ],
)
def test_prune_metrics_refuses_bad_options_before_deleting_anything(retention_settings, args, message):
    create("cpu", 1.0, time.time() * 1000 - 30 * D)
    tiers = derived.stored_rollups()
    with pytest.raises(CommandError) as raised:
        call_command("prune_metrics", *args, stdout=StringIO())
    assert str(raised.value) == message
    assert Metric.objects.count() == 1 and derived.stored_rollups() == tiers and derived.horizons() == {}
