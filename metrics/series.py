"""One name's readings over a time range, in step-aligned buckets, read from the tiers.

The step is the smallest round one (1 s, 2 s, 5 s, 10 s, ... 1 d, 2 d, 5 d,
...) that gives at most `points` buckets. A step of 10 s or more is a
multiple of a tier (metrics.derived.TIERS): whole buckets are sums of that
tier's rows, and a bucket cut by the range's edge is put together from
coarse to fine tiers and, for the last few seconds, raw readings. So the
rows read are bounded by the number of points (and a small constant per
edge), never by the readings in the range. A step under 10 s is computed from
raw readings only while the range holds few of them (SERIES_RAW_READINGS_PER_POINT
per point); otherwise the step grows. See docs/history.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from . import derived
from .schema import json_number

MAX_POINTS = 2000
# JavaScript's Date range: a bound on from, to and last that keeps every
# bucket computation exact (well under 2**53).
MAX_ABS_MS = 8.64e15

_SECOND, _MINUTE, _HOUR, _DAY = 1000, 60_000, 3_600_000, 86_400_000
_ROUND_STEPS = (
    _SECOND,
    2 * _SECOND,
    5 * _SECOND,
    10 * _SECOND,
    20 * _SECOND,
    30 * _SECOND,
    _MINUTE,
    2 * _MINUTE,
    5 * _MINUTE,
    10 * _MINUTE,
    20 * _MINUTE,
    30 * _MINUTE,
    _HOUR,
    2 * _HOUR,
    3 * _HOUR,
    6 * _HOUR,
    12 * _HOUR,
    _DAY,
)


def _steps() -> Iterator[int]:
    yield from _ROUND_STEPS
    scale = _DAY
    while True:  # 2 d, 5 d, 10 d, 20 d, 50 d, ...
        for factor in (2, 5, 10):
            yield scale * factor
        scale *= 10


@dataclass(frozen=True)
class Window:
    """A fixed range of timestamps, start..end (both included), or a window
    of `last` ms that ends now and slides with time."""

    start: float | None = None
    end: float | None = None
    last: float | None = None

    @property
    def sliding(self) -> bool:
        return self.last is not None


@dataclass(frozen=True)
class Series:
    data: dict[str, Any]
    # For a sliding window: when (ms since epoch) the result goes stale as
    # time passes, even if no reading lands.
    refresh_at: float | None


Agg = list  # [count, sum, min, max]


def _merge(into: dict[int, Agg], t: int, count: int, total: float, low: float, high: float) -> None:
    agg = into.get(t)
    if agg is None:
        into[t] = [count, total, low, high]
    else:
        agg[0] += count
        agg[1] += total
        agg[2] = min(agg[2], low)
        agg[3] = max(agg[3], high)


class _Reader:
    """The reads of one evaluation, on one cursor."""

    def __init__(self, cursor: Any, name: str, horizons: dict[int, float]) -> None:
        self.cursor = cursor
        self.name = name
        self.horizons = horizons
        self.metric = connection.ops.quote_name(derived.METRIC)

    def covers(self, level: int, start: float) -> bool:
        """Whether `level` (0: raw) still holds everything from `start` on."""
        pruned_before = self.horizons.get(level)
        return pruned_before is None or pruned_before <= start

    def raw(self, lo: float, hi: float, hi_inclusive: bool, limit: int | None = None) -> list[tuple] | None:
        """(timestamp, value) of the readings in the range; None when there
        are more than `limit`."""
        op = "<=" if hi_inclusive else "<"
        sql = f"SELECT timestamp, value FROM {self.metric} WHERE name = %s AND timestamp >= %s AND timestamp {op} %s"
        params: list[Any] = [self.name, float(lo), float(hi)]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit + 1)
        self.cursor.execute(sql, params)
        rows = self.cursor.fetchall()
        return None if limit is not None and len(rows) > limit else rows

    def tier(self, res: int, start: int, end: int) -> list[tuple]:
        """(start, count, sum, min, max) of the `res` buckets starting in [start, end)."""
        self.cursor.execute(
            f"SELECT start, count, sum, min, max FROM {derived.ROLLUP} "
            f"WHERE name = %s AND resolution = %s AND start >= %s AND start < %s",
            [self.name, res, start, end],
        )
        return self.cursor.fetchall()

    def span(self, lo: float, hi: float, hi_inclusive: bool) -> Agg | None:
        """The readings with lo <= timestamp < hi (<= hi if inclusive): whole
        buckets of the coarsest tier that fits, the rest from finer tiers,
        then raw readings for what is left at each end (under 10 s)."""
        total: dict[int, Agg] = {}
        self._span(lo, hi, hi_inclusive, len(derived.TIERS) - 1, total)
        return total.get(0)

    def _span(self, lo: float, hi: float, hi_inclusive: bool, level: int, into: dict[int, Agg]) -> None:
        if hi < lo or (hi == lo and not hi_inclusive):
            return
        for index in range(level, -1, -1):
            res = derived.TIERS[index]
            first = -(-math.ceil(lo) // res) * res
            end = (math.floor(hi) // res) * res  # buckets ending by hi are whole
            if first < end and self.covers(res, first):
                for _start, count, total, low, high in self.tier(res, first, end):
                    _merge(into, 0, count, total, low, high)
                self._span(lo, first, False, index - 1, into)
                self._span(end, hi, hi_inclusive, index - 1, into)
                return
        for _ts, value in self.raw(lo, hi, hi_inclusive) or ():
            _merge(into, 0, 1, value, value, value)


def _coarsest_tier(step: int, reader: _Reader, start: float) -> int | None:
    for res in reversed(derived.TIERS):
        if step % res == 0 and reader.covers(res, start):
            return res
    return None


def _range(window: Window, step: int, now: float) -> tuple[float, float, bool, int]:
    """(lo, hi, hi included, number of buckets) of `window` at this step. A
    sliding window is whole buckets ending with the one that holds now, so
    its result changes only when a step passes or a reading lands."""
    if window.sliding:
        assert window.last is not None
        count = max(1, math.ceil(window.last / step))
        end = (math.floor(now) // step + 1) * step
        return end - count * step, end, False, count
    assert window.start is not None and window.end is not None
    lo, hi = window.start, window.end
    return lo, hi, True, math.floor(hi) // step - math.floor(lo) // step + 1


def metric_series(*, name: str, points: int, window: Window, now_ms: float | None = None) -> Series:
    """The `metric-series` result for one name (params already validated)."""
    now = now_ms if now_ms is not None else time.time() * 1000
    raw_limit = settings.DASHBOARD["SERIES_RAW_READINGS_PER_POINT"] * points
    buckets: dict[int, Agg] = {}
    with connection.cursor() as cursor:
        reader = _Reader(cursor, name, derived.horizons())
        cursor.execute(f"SELECT last_unit FROM {derived.STATS} WHERE name = %s", [name])
        found = cursor.fetchone()
        unit = found[0] if found else ""
        for step in _steps():
            lo, hi, inclusive, count = _range(window, step, now)
            if count > points:
                continue
            if step < derived.TIERS[0]:
                rows = reader.raw(lo, hi, inclusive, raw_limit) if reader.covers(derived.RAW, lo) else None
                if rows is None:  # too many readings (or pruned): a coarser step
                    continue
                for ts, value in rows:
                    _merge(buckets, (math.floor(ts) // step) * step, 1, value, value, value)
                break
            res = _coarsest_tier(step, reader, lo)
            if res is None and step < derived.TIERS[-1]:
                continue
            _fill(reader, buckets, lo, hi, inclusive, step, res or derived.TIERS[-1])
            break
    if window.sliding:
        shown_from, shown_to, refresh_at = lo, hi, float(hi)
    else:
        shown_from, shown_to, refresh_at = json_number(float(lo)), json_number(float(hi)), None
    return Series(
        data={
            "name": name,
            "unit": unit,
            "from": shown_from,
            "to": shown_to,
            "step": step,
            "points": [
                {
                    "t": t,
                    "count": agg[0],
                    "min": json_number(float(agg[2])),
                    "max": json_number(float(agg[3])),
                    "avg": json_number(agg[1] / agg[0]),
                }
                for t, agg in sorted(buckets.items())
                if agg[0] > 0
            ],
        },
        refresh_at=refresh_at,
    )


def _fill(reader: _Reader, buckets: dict[int, Agg], lo: float, hi: float, inclusive: bool, step: int, res: int) -> None:
    """Buckets of `step` over the range: whole ones from tier `res`, the one
    or two cut by the range's ends put together exactly (`span`)."""
    first = (math.floor(lo) // step) * step
    if inclusive or hi != math.floor(hi) or math.floor(hi) % step:
        last = (math.floor(hi) // step) * step  # the bucket holding hi (or the latest reading before it)
    else:
        last = int(hi) - step  # an exclusive end on a boundary: that bucket is not in range

    def put(t: int, agg: Agg | None) -> None:
        if agg is not None:
            _merge(buckets, t, *agg)

    whole_from = first if first >= lo else first + step
    whole_to = last + step if last + step <= hi else last
    if whole_from > whole_to:  # one bucket, cut at both ends
        put(first, reader.span(lo, hi, inclusive))
        return
    if first < lo:
        put(first, reader.span(lo, first + step, False))
    for t, count, total, low, high in reader.tier(res, whole_from, whole_to):
        _merge(buckets, (t // step) * step, count, total, low, high)
    if whole_to == last:
        put(last, reader.span(last, hi, inclusive))
