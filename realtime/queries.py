"""The reactive queries viewers subscribe to: defining one is one function here.

A query is a plain function of (store, params) run in the database thread; the
`store` it gets records which buckets it read, so the fan-out re-evaluates it
only after changes to those buckets. Params are checked inside the function
with the helpers below, which raise the protocol's VALIDATION_ERROR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

import alerting.selectors
from metrics import selectors, series
from metrics.errors import VALIDATION_ERROR, StoreError, invalid_field
from metrics.schema import get_bucket, is_number, to_finite_float

from . import fields
from .errors import QUERY_NOT_DEFINED, ProtocolError


class BucketReader:
    """Read-only view of one bucket for query functions. Tells its store what
    it read: one metric name's readings, or anything of the bucket."""

    def __init__(self, name: str, store: QueryStore) -> None:
        self._bucket = get_bucket(name)
        self._name = name
        self._store = store

    def _whole(self) -> None:
        self._store.read_whole(self._name)

    def _of_name(self, filter: dict | None) -> None:
        # A filter on the name alone (`{"name": "cpu"}`) reads one name's readings.
        if filter is not None and len(filter) == 1 and isinstance(filter.get("name"), str):
            self._store.read_name(self._name, filter["name"])
        else:
            self._whole()

    def all(self) -> list:
        self._whole()
        return selectors.record_all(bucket=self._bucket)

    def where(self, filter: dict) -> list:
        self._of_name(filter)
        return selectors.record_where(bucket=self._bucket, filter=filter)

    def find_one(self, filter: dict) -> Any:
        self._of_name(filter)
        return selectors.record_find_one(bucket=self._bucket, filter=filter)

    def count(self, filter: dict | None = None) -> int:
        self._of_name(filter)
        return selectors.record_count(bucket=self._bucket, filter=filter)

    def first(self, n: int) -> list:
        self._whole()
        return selectors.record_first(bucket=self._bucket, n=n)

    def last(self, n: int, filter: dict | None = None) -> list:
        self._of_name(filter)
        return selectors.record_last(bucket=self._bucket, n=n, filter=filter)

    def aggregate(self, op: str, field: str, filter: dict | None = None) -> Any:
        self._of_name(filter)
        return selectors.record_aggregate(bucket=self._bucket, op=op, field=field, filter=filter)

    def stats_by_name(self) -> list[dict[str, Any]]:
        """Per name: count, min, max, avg, last (newest value) and unit."""
        self._whole()
        return selectors.record_stats_by_name(bucket=self._bucket)

    def total(self) -> int:
        """How many records there are, from the figures writes maintain."""
        self._whole()
        return selectors.metrics_total()

    def series(self, name: str, points: int, window: series.Window) -> series.Series:
        """One name's readings in time buckets (metrics.series)."""
        self._store.read_name(self._name, name)
        return series.metric_series(name=name, points=points, window=window)


class QueryStore:
    """What a query function reads through; remembers the buckets it touched
    (and, where it read only some metric names' readings, which), and, for a
    result that goes stale as time passes, when."""

    def __init__(self) -> None:
        self.buckets_read: set[str] = set()
        self._whole: set[str] = set()
        self._names: dict[str, set[str]] = {}
        self.refresh_at: float | None = None

    def bucket(self, name: str) -> BucketReader:
        """A bucket to read; asking for it counts as depending on all of it
        unless every read through it names one metric."""
        self.buckets_read.add(name)
        return BucketReader(name, self)

    def read_whole(self, bucket: str) -> None:
        self._whole.add(bucket)

    def read_name(self, bucket: str, name: str) -> None:
        self._names.setdefault(bucket, set()).add(name)

    def names_read(self) -> dict[str, frozenset[str]]:
        """{bucket: the only metric names whose readings the result depends
        on}, for the buckets read by name alone."""
        return {
            bucket: frozenset(names)
            for bucket, names in self._names.items()
            if bucket in self.buckets_read and bucket not in self._whole
        }

    def refresh_by(self, at_ms: float | None) -> None:
        """The result must be evaluated again by `at_ms` (ms since epoch)
        even if none of its buckets changes."""
        if at_ms is not None and (self.refresh_at is None or at_ms < self.refresh_at):
            self.refresh_at = at_ms


QueryFunction = Callable[[QueryStore, dict[str, Any]], Any]


@dataclass(frozen=True)
class QueryDef:
    name: str
    function: QueryFunction
    # The params keys the query knows; any other is a VALIDATION_ERROR, so a
    # client cannot make distinct live queries out of junk keys.
    params: frozenset[str] = frozenset()

    def check_params(self, params: dict[str, Any]) -> None:
        unknown = sorted(key for key in params if key not in self.params)
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise StoreError(
                VALIDATION_ERROR,
                f'Unknown param "{unknown[0]}" for query "{self.name}" (known: {known})',
                [{"field": key, "message": "Unknown param", "code": "unknown"} for key in unknown],
            )


QUERIES: dict[str, QueryDef] = {}


def define_query(name: str, params: tuple[str, ...] = ()) -> Callable[[QueryFunction], QueryFunction]:
    def register(function: QueryFunction) -> QueryFunction:
        QUERIES[name] = QueryDef(name=name, function=function, params=frozenset(params))
        return function

    return register


def get_query(name: str) -> QueryDef:
    try:
        return QUERIES[name]
    except KeyError:
        raise ProtocolError(QUERY_NOT_DEFINED, f'Query "{name}" is not defined') from None


# Param checks raise VALIDATION_ERROR with the protocol's field messages.
param_string = fields.non_empty_string
param_positive_int = fields.positive_int


# --- The dashboard's queries ----------------------------------------------


@define_query("all-metrics")
def all_metrics(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").all()


@define_query("metrics-by-name", params=("name",))
def metrics_by_name(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").where({"name": param_string(params, "name")})


@define_query("metric-count")
def metric_count(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").total()


@define_query("latest-metrics", params=("n",))
def latest_metrics(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").last(param_positive_int(params, "n"))


@define_query("latest-metrics-by-name", params=("name", "n"))
def latest_metrics_by_name(store: QueryStore, params: dict[str, Any]) -> Any:
    """The newest n readings of one name, oldest first: a chart's window
    without sending the name's whole history on every push."""
    name = param_string(params, "name")
    return store.bucket("metrics").last(param_positive_int(params, "n"), {"name": name})


@define_query("active-alerts")
def active_alerts(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("alerts").all()


@define_query("metric-stats")
def metric_stats(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").stats_by_name()


def _param_ms(params: dict[str, Any], name: str, *, positive: bool = False) -> float:
    value = params.get(name)
    number = to_finite_float(value) if is_number(value) else None
    if number is None or abs(number) > series.MAX_ABS_MS or (positive and number <= 0):
        what = "positive number of ms" if positive else "finite number (ms since epoch)"
        raise invalid_field(name, f"{what} up to {series.MAX_ABS_MS:.0f}")
    return number


@define_query("metric-series", params=("name", "points", "from", "to", "last"))
def metric_series(store: QueryStore, params: dict[str, Any]) -> Any:
    """One name's readings in at most `points` step-aligned buckets over a
    fixed range ({from, to}) or a window ending now ({last}) that slides."""
    name = param_string(params, "name")
    raw_points = params.get("points")
    points = to_finite_float(raw_points) if is_number(raw_points) else None
    if points is None or not points.is_integer() or not 1 <= points <= series.MAX_POINTS:
        raise invalid_field("points", f"integer from 1 to {series.MAX_POINTS}")
    fixed = "from" in params or "to" in params
    if fixed == ("last" in params):
        raise StoreError(VALIDATION_ERROR, 'metric-series needs either "from" and "to", or "last"')
    if fixed:
        start, end = _param_ms(params, "from"), _param_ms(params, "to")
        if start > end:
            raise StoreError(VALIDATION_ERROR, 'Invalid "to": must not be before "from"')
        window = series.Window(start=start, end=end)
    else:
        window = series.Window(last=_param_ms(params, "last", positive=True))
    result = store.bucket("metrics").series(name, int(points), window)
    store.refresh_by(result.refresh_at)
    return result.data


@define_query("alert-status")
def alert_status(store: QueryStore, params: dict[str, Any]) -> Any:
    """Each alert's state and its metric's newest value, in the alerts
    bucket's order (docs/alerts.md). States change only with the alerts and
    with readings of the names they watch, in the transactions that write
    them."""
    result = alerting.selectors.alert_status()
    _depends_on_alerts(store, {entry["metric"] for entry in result})
    return result


@define_query("alert-events", params=("n",))
def alert_events(store: QueryStore, params: dict[str, Any]) -> Any:
    """The newest n alert transitions, oldest first (n up to
    DASHBOARD_MAX_ALERT_EVENTS)."""
    n = param_positive_int(params, "n", settings.DASHBOARD["MAX_ALERT_EVENTS"])
    _depends_on_alerts(store, alerting.selectors.watched_names())
    return alerting.selectors.alert_events(n=n)


def _depends_on_alerts(store: QueryStore, watched: set[str]) -> None:
    # Read through alerting.selectors: any change of the alerts, and changes
    # of the readings of the watched names only (a change that names no
    # name, a clear or a prune, reaches every query that reads metrics).
    store.bucket("alerts")
    if not watched:
        return  # no alert watches anything: no reading can change the result
    store.bucket("metrics")
    for name in watched:
        store.read_name("metrics", name)
