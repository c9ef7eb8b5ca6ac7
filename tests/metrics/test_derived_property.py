"""Property: after any sequence of writes, by any write path, the figures the
writes maintain (per-name stats, time-bucket tiers) equal a full
recomputation, and `metric-series` equals a brute-force bucketing of the
readings. Runs on SQLite and, in the suite's second pass, on PostgreSQL."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrics import derived, retention, series, services
from metrics.errors import StoreError
from metrics.models import Metric
from metrics.schema import BUCKETS

METRICS = BUCKETS["metrics"]
NAMES = ["cpu", "mem", "disk"]
T0 = 1_800_000_000_000
DAY = 86_400_000

# Timestamps across bucket edges of every tier, a few days either side of T0,
# some with fractions of a millisecond.
timestamps = st.one_of(
    st.integers(-3 * DAY, 3 * DAY).map(lambda offset: float(T0 + offset)),
    st.integers(-20_000, 20_000).map(lambda offset: T0 + offset + 0.5),
    st.sampled_from([float(T0), T0 - 0.25, float(T0 + 10_000), float(T0 + 59_999), float(T0 - DAY)]),
)
values = st.one_of(
    st.integers(-1000, 1000).map(float), st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3))
)
reading = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "value": values, "timestamp": timestamps, "unit": st.sampled_from(["%", "B", ""])}
)
change = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(NAMES),
        "value": values,
        "timestamp": timestamps,
        "unit": st.sampled_from(["%", "B"]),
    },
)

write = st.one_of(
    st.tuples(st.just("insert"), reading),
    st.tuples(st.just("update"), st.integers(0, 40), change),
    st.tuples(st.just("delete"), st.integers(0, 40)),
)
step = st.one_of(
    write,
    st.tuples(st.just("transaction"), st.lists(write, min_size=1, max_size=5), st.booleans()),
    # One connection's pipelined inserts (one commit); a repeated id fails
    # in the database, and the batch is written again one at a time.
    st.tuples(st.just("pipelined"), st.lists(reading, min_size=1, max_size=6), st.booleans()),
    st.tuples(st.just("shell-create"), reading),
    st.tuples(st.just("shell-delete"), st.integers(0, 40)),
    st.tuples(st.just("bulk-delete"), st.sampled_from(NAMES), st.integers(0, 3 * DAY)),
    st.tuples(st.just("clear")),
    st.tuples(st.just("prune"), st.integers(0, 4 * DAY), st.sampled_from([None, 1, 2]), st.integers(1, 4)),
)


class History:
    """What the tiers must hold: every reading written and not deleted or
    updated away, including readings pruned from raw (tiers outlive them)."""

    def __init__(self) -> None:
        self.readings: dict[int, tuple] = {}  # seq -> (name, value, timestamp), live in raw
        self.pruned: list[tuple] = []

    def rollups(self) -> dict[tuple, tuple]:
        sums: dict[tuple, list] = {}
        for name, value, ts in [*self.readings.values(), *self.pruned]:
            for res in derived.TIERS:
                key = (name, res, derived.bucket_start(ts, res))
                agg = sums.setdefault(key, [0, [], math.inf, -math.inf])
                agg[0] += 1
                agg[1].append(value)
                agg[2] = min(agg[2], value)
                agg[3] = max(agg[3], value)
        return {key: (n, math.fsum(vs), lo, hi) for key, (n, vs, lo, hi) in sums.items()}

    def sync_from_raw(self) -> None:
        """After a prune: readings no longer in raw moved to `pruned`."""
        alive = set(Metric.objects.values_list("seq", flat=True))
        for seq in list(self.readings):
            if seq not in alive:
                self.pruned.append(self.readings.pop(seq))


def _row(seq: int) -> tuple:
    m = Metric.objects.get(seq=seq)
    return (m.name, m.value, m.timestamp)


def _operation(choice: tuple, keys: list[str]) -> services.Operation | None:
    kind = choice[0]
    if kind == "insert":
        return services.Operation("insert", METRICS, {"data": dict(choice[1])})
    if not keys:
        return None
    key = keys[choice[1] % len(keys)]
    if kind == "update":
        return services.Operation("update", METRICS, {"key": key, "data": dict(choice[2])})
    return services.Operation("delete", METRICS, {"key": key})


def _keys() -> list[str]:
    return list(Metric.objects.order_by("seq").values_list("key", flat=True))


def _apply(choice: tuple, history: History) -> None:
    kind = choice[0]
    keys = _keys()
    if kind in ("insert", "update", "delete"):
        operation = _operation(choice, keys)
        if operation is not None:
            services.transaction_run(operations=[operation])
    elif kind == "transaction":
        operations = [op for op in (_operation(w, keys) for w in choice[1]) if op]
        if choice[2]:  # fails at the end: nothing of it may stay
            operations.append(services.Operation("update", METRICS, {"key": "missing", "data": {}}))
        try:
            services.transaction_run(operations=operations)
        except StoreError:
            pass  # a forced failure, or a delete then update of one key
    elif kind == "pipelined":
        items = [(METRICS, dict(data)) for data in choice[1]]
        if choice[2]:
            items[0][1]["id"] = items[-1][1]["id"] = "same-id"
        services.record_insert_each(items=items)
    elif kind == "shell-create":
        # A shell in autocommit mode, through the model.
        Metric.objects.create(**choice[1])
    elif kind == "shell-delete" and keys:
        Metric.objects.get(key=keys[choice[1] % len(keys)]).delete()
    elif kind == "bulk-delete":
        # What the admin's "delete selected" runs: QuerySet.delete().
        Metric.objects.filter(name=choice[1], timestamp__lt=T0 - DAY + choice[2]).delete()
    elif kind == "clear":
        services.bucket_clear(bucket=METRICS)
        history.readings.clear()
        history.pruned.clear()
    elif kind == "prune":
        retention.prune_raw(older_than_ms=choice[1], keep_per_name=choice[2], now_ms=T0 + DAY, batch=choice[3])
        history.sync_from_raw()
        return
    # Every other write: the history is what raw now holds, plus the pruned.
    history.readings = {seq: _row(seq) for seq in Metric.objects.values_list("seq", flat=True)}


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def assert_figures_match(history: History) -> None:
    stored, fresh = derived.stored_stats(), derived.recomputed_stats()
    assert set(stored) == set(fresh)
    for name, (count, total, low, high, last, unit) in fresh.items():
        s_count, s_total, s_low, s_high, s_last, s_unit = stored[name]
        assert (s_count, s_low, s_high, s_last, s_unit) == (count, low, high, last, unit), name
        assert _close(s_total, total), (name, s_total, total)
    stored_tiers, expected = derived.stored_rollups(), history.rollups()
    assert set(stored_tiers) == set(expected)
    for key, (count, total, low, high) in expected.items():
        s_count, s_total, s_low, s_high = stored_tiers[key]
        if any(key[0] == p[0] and derived.bucket_start(p[2], key[1]) == key[2] for p in history.pruned):
            # A bucket that lost raw readings to a prune cannot have a
            # deleted extreme repaired from raw: only count and sum are exact.
            assert s_count == count and _close(s_total, total), key
        else:
            assert (s_count, s_low, s_high) == (count, low, high), key
            assert _close(s_total, total), (key, s_total, total)


@pytest.mark.django_db(transaction=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=14))
def test_maintained_figures_equal_a_full_recomputation(steps):
    services.bucket_clear(bucket=METRICS)
    history = History()
    for choice in steps:
        _apply(choice, history)
    assert_figures_match(history)


# --- metric-series against brute force --------------------------------------------


def brute_series(readings: list[tuple], lo: float, hi: float, step: int) -> list[dict]:
    buckets: dict[int, list] = defaultdict(list)
    for _name, value, ts in readings:
        if lo <= ts <= hi:
            buckets[(math.floor(ts) // step) * step].append(value)
    return [
        {"t": t, "count": len(vs), "min": min(vs), "max": max(vs), "avg": math.fsum(vs) / len(vs)}
        for t, vs in sorted(buckets.items())
    ]


def assert_points_equal(got: list[dict], want: list[dict]) -> None:
    assert [(p["t"], p["count"], p["min"], p["max"]) for p in got] == [
        (p["t"], p["count"], p["min"], p["max"]) for p in want
    ]
    for g, w in zip(got, want, strict=False):
        assert _close(g["avg"], w["avg"]), (g, w)


@pytest.mark.django_db(transaction=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    readings=st.lists(st.tuples(values, timestamps), min_size=0, max_size=30),
    lo=st.integers(-4 * DAY, 4 * DAY),
    width=st.one_of(st.integers(0, 120_000), st.integers(0, 8 * DAY)),
    fraction=st.sampled_from([0, 0.5]),
    points=st.integers(1, 2000),
)
def test_fixed_range_series_equals_brute_force(readings, lo, width, fraction, points):
    services.bucket_clear(bucket=METRICS)
    for value, ts in readings:
        services.record_insert(bucket=METRICS, data={"name": "cpu", "value": value, "timestamp": ts})
    start = T0 + lo + fraction
    end = start + width
    result = series.metric_series(name="cpu", points=points, window=series.Window(start=start, end=end)).data
    step = result["step"]
    assert math.floor(end) // step - math.floor(start) // step + 1 <= points
    assert len(result["points"]) <= points
    assert (result["name"], result["from"], result["to"]) == ("cpu", start, end)
    assert_points_equal(result["points"], brute_series([("cpu", v, t) for v, t in readings], start, end, step))


@pytest.mark.django_db(transaction=True)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    readings=st.lists(st.tuples(values, st.integers(-8 * DAY, 60_000)), min_size=0, max_size=30),
    last=st.sampled_from([1_000, 60_000, 300_000, 3_600_000, 6 * 3_600_000, DAY, 7 * DAY]),
    points=st.integers(1, 2000),
    now_offset=st.integers(0, 86_399_999),
)
def test_sliding_series_equals_brute_force(readings, last, points, now_offset):
    services.bucket_clear(bucket=METRICS)
    now = T0 + now_offset
    for value, offset in readings:
        services.record_insert(bucket=METRICS, data={"name": "cpu", "value": value, "timestamp": now - offset})
    result = series.metric_series(name="cpu", points=points, window=series.Window(last=last), now_ms=now)
    data, step = result.data, result.data["step"]
    # Whole buckets, ending with the one that holds now, covering at least `last`.
    assert data["to"] == (now // step + 1) * step == result.refresh_at
    assert data["to"] - data["from"] >= last and (data["to"] - data["from"]) % step == 0
    assert (data["to"] - data["from"]) // step <= points
    expected = brute_series([("cpu", v, now - o) for v, o in readings], data["from"], data["to"] - 0.001, step)
    assert_points_equal(data["points"], expected)
