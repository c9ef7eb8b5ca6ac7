"""The reactive queries viewers subscribe to: defining one is one function here.

A query is a plain function of (store, params) run in the database thread; the
`store` it gets records which buckets it read, so the fan-out re-evaluates it
only after changes to those buckets. Params are checked inside the function
with the helpers below, which raise the protocol's VALIDATION_ERROR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from metrics import selectors
from metrics.schema import get_bucket

from . import fields
from .errors import QUERY_NOT_DEFINED, ProtocolError


class BucketReader:
    """Read-only view of one bucket for query functions."""

    def __init__(self, name: str) -> None:
        self._bucket = get_bucket(name)

    def all(self) -> list:
        return selectors.record_all(bucket=self._bucket)

    def where(self, filter: dict) -> list:
        return selectors.record_where(bucket=self._bucket, filter=filter)

    def find_one(self, filter: dict) -> Any:
        return selectors.record_find_one(bucket=self._bucket, filter=filter)

    def count(self, filter: dict | None = None) -> int:
        return selectors.record_count(bucket=self._bucket, filter=filter)

    def first(self, n: int) -> list:
        return selectors.record_first(bucket=self._bucket, n=n)

    def last(self, n: int, filter: dict | None = None) -> list:
        return selectors.record_last(bucket=self._bucket, n=n, filter=filter)

    def aggregate(self, op: str, field: str, filter: dict | None = None) -> Any:
        return selectors.record_aggregate(bucket=self._bucket, op=op, field=field, filter=filter)

    def stats_by_name(self) -> list[dict[str, Any]]:
        """Per name: count, min, max, avg, last (newest value) and unit."""
        return selectors.record_stats_by_name(bucket=self._bucket)


class QueryStore:
    """What a query function reads through; remembers the buckets it touched."""

    def __init__(self) -> None:
        self.buckets_read: set[str] = set()

    def bucket(self, name: str) -> BucketReader:
        reader = BucketReader(name)
        self.buckets_read.add(name)
        return reader


QueryFunction = Callable[[QueryStore, dict[str, Any]], Any]


@dataclass(frozen=True)
class QueryDef:
    name: str
    function: QueryFunction


QUERIES: dict[str, QueryDef] = {}


def define_query(name: str) -> Callable[[QueryFunction], QueryFunction]:
    def register(function: QueryFunction) -> QueryFunction:
        QUERIES[name] = QueryDef(name=name, function=function)
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


@define_query("metrics-by-name")
def metrics_by_name(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").where({"name": param_string(params, "name")})


@define_query("metric-count")
def metric_count(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").count()


@define_query("latest-metrics")
def latest_metrics(store: QueryStore, params: dict[str, Any]) -> Any:
    return store.bucket("metrics").last(param_positive_int(params, "n"))


@define_query("latest-metrics-by-name")
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
