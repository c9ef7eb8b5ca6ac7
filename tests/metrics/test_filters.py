"""Filters (docs/protocol.md, Filters): every operator through
`selectors.record_where` and `selectors.record_count`, with the reference
store's JavaScript semantics and our validation."""

from __future__ import annotations

from typing import Any

import pytest

from metrics import selectors, services
from metrics.errors import VALIDATION_ERROR, StoreError
from metrics.schema import BUCKETS

pytestmark = pytest.mark.django_db

METRICS = BUCKETS["metrics"]

# Inserted in this order; the key of each is its "id".
ROWS = [
    {"id": "m1", "name": "cpu", "value": 72.5, "unit": "%", "timestamp": 1000},
    {"id": "m2", "name": "memory", "value": 4200, "unit": "MB", "timestamp": 2000},
    {"id": "m3", "name": "cpu", "value": 95.2, "unit": "%", "timestamp": 3000},
    {"id": "m4", "name": "Disk.IO", "value": 0, "unit": "", "timestamp": 4000},
    {"id": "m5", "name": "net_rx", "value": -3, "unit": "kB/s", "timestamp": 5000},
]
ALL = [row["id"] for row in ROWS]


@pytest.fixture
def rows() -> dict[str, dict[str, Any]]:
    """The stored records by key."""
    return {row["id"]: services.record_insert(bucket=METRICS, data=row) for row in ROWS}


def where(filter_spec: Any) -> list[dict[str, Any]]:
    return selectors.record_where(bucket=METRICS, filter=filter_spec)


def count(filter_spec: Any) -> int:
    return selectors.record_count(bucket=METRICS, filter=filter_spec)


def check(rows: dict[str, dict[str, Any]], filter_spec: Any, keys: list[str]) -> None:
    """`where` gives exactly the records with these keys, in insertion order,
    and `count` agrees."""
    assert where(filter_spec) == [rows[k] for k in keys]
    assert count(filter_spec) == len(keys)


CASES = [
    # Plain values mean equality.
    ({}, ALL),
    ({"name": "cpu"}, ["m1", "m3"]),
    ({"name": "CPU"}, []),
    ({"value": 4200}, ["m2"]),
    ({"value": 4200.0}, ["m2"]),
    ({"value": 72.5}, ["m1"]),
    ({"unit": ""}, ["m4"]),
    ({"name": "cpu", "unit": "%", "value": 95.2}, ["m3"]),
    ({"name": "cpu", "value": 4200}, []),
    # $eq / $neq
    ({"name": {"$eq": "memory"}}, ["m2"]),
    ({"value": {"$eq": 0}}, ["m4"]),
    ({"name": {"$neq": "cpu"}}, ["m2", "m4", "m5"]),
    ({"value": {"$neq": 72.5}}, ["m2", "m3", "m4", "m5"]),
    # $gt $gte $lt $lte, alone and combined
    ({"value": {"$gt": 72.5}}, ["m2", "m3"]),
    ({"value": {"$gte": 72.5}}, ["m1", "m2", "m3"]),
    ({"value": {"$lt": 0}}, ["m5"]),
    ({"value": {"$lte": 0}}, ["m4", "m5"]),
    ({"value": {"$gt": 0, "$lt": 100}}, ["m1", "m3"]),
    ({"timestamp": {"$gte": 2000, "$lte": 4000}}, ["m2", "m3", "m4"]),
    ({"name": {"$gt": "d"}}, ["m2", "m5"]),  # "Disk.IO" < "d": code point order
    ({"name": {"$lt": "d"}}, ["m1", "m3", "m4"]),
    # $in / $nin
    ({"name": {"$in": ["cpu", "net_rx"]}}, ["m1", "m3", "m5"]),
    ({"value": {"$in": [4200, 0, 1]}}, ["m2", "m4"]),
    ({"name": {"$in": []}}, []),
    ({"name": {"$nin": ["cpu", "net_rx"]}}, ["m2", "m4"]),
    ({"value": {"$nin": [72.5, 95.2]}}, ["m2", "m4", "m5"]),
    ({"name": {"$nin": []}}, ALL),
    # $contains: case-insensitive substring
    ({"name": {"$contains": "pu"}}, ["m1", "m3"]),
    ({"name": {"$contains": "CPU"}}, ["m1", "m3"]),
    ({"name": {"$contains": "disk.io"}}, ["m4"]),
    ({"name": {"$contains": "o"}}, ["m2", "m4"]),
    ({"unit": {"$contains": "b"}}, ["m2", "m5"]),
    ({"name": {"$contains": ""}}, ALL),
    # $startsWith / $endsWith: case-sensitive
    ({"name": {"$startsWith": "me"}}, ["m2"]),
    ({"name": {"$startsWith": "Disk"}}, ["m4"]),
    ({"name": {"$startsWith": "disk"}}, []),
    ({"name": {"$startsWith": "CPU"}}, []),
    ({"name": {"$startsWith": "cpu"}}, ["m1", "m3"]),
    ({"name": {"$startsWith": "cpus"}}, []),
    ({"name": {"$startsWith": ""}}, ALL),
    ({"name": {"$endsWith": "IO"}}, ["m4"]),
    ({"name": {"$endsWith": "io"}}, []),
    ({"name": {"$endsWith": "ory"}}, ["m2"]),
    ({"name": {"$endsWith": "cpu"}}, ["m1", "m3"]),
    ({"name": {"$endsWith": "xcpu"}}, []),
    ({"unit": {"$endsWith": "/s"}}, ["m5"]),
    ({"name": {"$endsWith": ""}}, ALL),
    ({"name": {"$startsWith": "c", "$endsWith": "u"}}, ["m1", "m3"]),
    # $exists: every field of a record holds a value (unit "" included)
    ({"unit": {"$exists": True}}, ALL),
    ({"unit": {"$exists": False}}, []),
    # $between: inclusive at both ends
    ({"value": {"$between": [0, 72.5]}}, ["m1", "m4"]),
    ({"value": {"$between": [-3, 95.2]}}, ["m1", "m3", "m4", "m5"]),
    ({"value": {"$between": [100, 0]}}, []),
    ({"timestamp": {"$between": [3000, 3000]}}, ["m3"]),
    ({"name": {"$between": ["cpu", "memory"]}}, ["m1", "m2", "m3"]),
    # $or / $and, nested and combined with sibling fields
    ({"$or": [{"name": "memory"}, {"value": {"$lt": 0}}]}, ["m2", "m5"]),
    ({"$and": [{"name": "cpu"}, {"value": {"$gt": 80}}]}, ["m3"]),
    ({"name": "cpu", "$or": [{"value": {"$gt": 80}}, {"unit": "MB"}]}, ["m3"]),
    ({"unit": "%", "$and": [{"value": {"$lt": 80}}]}, ["m1"]),
    (
        {"$or": [{"$and": [{"name": "cpu"}, {"value": {"$lt": 80}}]}, {"$and": [{"unit": ""}, {"value": 0}]}]},
        ["m1", "m4"],
    ),
    (
        {"$and": [{"$or": [{"name": "cpu"}, {"name": "memory"}]}, {"$or": [{"value": {"$gt": 90}}, {"unit": "MB"}]}]},
        ["m2", "m3"],
    ),
    ({"$or": [{"name": "cpu"}], "$and": [{"value": {"$gt": 80}}]}, ["m3"]),
    ({"$or": []}, []),
    ({"$and": []}, ALL),
    ({"name": "cpu", "$and": []}, ["m1", "m3"]),
    ({"name": "cpu", "$or": []}, []),
    ({"$or": [{}]}, ALL),
    # Type mismatches match nothing (no coercion)
    ({"value": "72.5"}, []),
    ({"value": "4200"}, []),
    ({"name": 5}, []),
    ({"value": True}, []),
    ({"value": False}, []),  # m4's 0 is not false
    ({"value": None}, []),
    ({"value": {"$eq": "0"}}, []),
    ({"value": {"$eq": False}}, []),
    ({"value": {"$gt": True}}, []),
    ({"value": {"$gte": "0"}}, []),
    ({"value": {"$lt": "100"}}, []),
    ({"value": {"$lte": None}}, []),
    ({"name": {"$gt": 0}}, []),
    ({"value": {"$in": ["4200", True, None]}}, []),
    ({"value": {"$in": ["4200", 4200]}}, ["m2"]),
    ({"value": {"$between": ["0", "100"]}}, []),
    ({"value": {"$between": [0, "100"]}}, []),
    ({"value": {"$contains": "72"}}, []),
    ({"value": {"$startsWith": "7"}}, []),
    ({"value": {"$endsWith": "5"}}, []),
    ({"value": {"$neq": "72.5"}}, ALL),
    ({"value": {"$neq": True}}, ALL),
    ({"value": {"$neq": None}}, ALL),
    ({"value": {"$nin": ["72.5", True]}}, ALL),
    ({"name": {}}, []),
    # The key and the meta fields can be filtered too
    ({"id": "m3"}, ["m3"]),
    ({"id": "nope"}, []),
    ({"id": {"$in": ["m5", "m1", "x"]}}, ["m1", "m5"]),
    ({"id": {"$neq": "m1"}}, ["m2", "m3", "m4", "m5"]),
    ({"id": {"$startsWith": "m"}}, ALL),
    ({"id": 1}, []),
    ({"_version": 1}, ALL),
    ({"_version": {"$gt": 1}}, []),
    ({"_version": "1"}, []),
]


@pytest.mark.parametrize("filter_spec, keys", CASES, ids=[repr(c[0]) for c in CASES])
def test_filter(rows, filter_spec, keys):
    check(rows, filter_spec, keys)


def test_filter_on_version_after_updates(rows):
    rows["m2"] = services.record_update(bucket=METRICS, key="m2", data={"value": 1})
    rows["m4"] = services.record_update(bucket=METRICS, key="m4", data={"value": 2})
    rows["m4"] = services.record_update(bucket=METRICS, key="m4", data={"value": 3})
    check(rows, {"_version": 2}, ["m2"])
    check(rows, {"_version": {"$gt": 1}}, ["m2", "m4"])
    check(rows, {"_version": {"$gte": 3}}, ["m4"])
    check(rows, {"_version": {"$in": [1, 3]}}, ["m1", "m3", "m4", "m5"])
    check(rows, {"_version": {"$between": [2, 3]}, "name": {"$neq": "memory"}}, ["m4"])
    # The updated values are what filters see.
    check(rows, {"value": {"$between": [1, 3]}}, ["m2", "m4"])
    check(rows, {"value": 4200}, [])


def test_filter_without_records():
    assert where({"name": "cpu"}) == []
    assert count({"name": "cpu"}) == 0
    assert count(None) == 0
    assert where({"$and": []}) == []


def test_count_without_filter(rows):
    assert count(None) == 5
    assert selectors.record_count(bucket=METRICS) == 5


def test_contains_is_case_insensitive_both_ways():
    services.record_insert(bucket=METRICS, data={"id": "a", "name": "CpuLoad", "value": 1, "timestamp": 1})
    services.record_insert(bucket=METRICS, data={"id": "b", "name": "cpuload", "value": 1, "timestamp": 1})
    services.record_insert(bucket=METRICS, data={"id": "c", "name": "CPULOAD", "value": 1, "timestamp": 1})
    services.record_insert(bucket=METRICS, data={"id": "d", "name": "cpu-load", "value": 1, "timestamp": 1})
    for operand in ("uLo", "ULO", "ulo", "cpuload"):
        assert [r["id"] for r in where({"name": {"$contains": operand}})] == ["a", "b", "c"], operand
        assert count({"name": {"$contains": operand}}) == 3


SPECIAL = {
    "s1": "50%_load",
    "s2": "50xyload",
    "s3": "a_b",
    "s4": "axb",
    "s5": "100%",
    "s6": "1000",
    "s7": "back\\slash",
    "s8": "backslash",
    "s9": "x[ab]*",
    "s10": "xa",
}


@pytest.fixture
def special_rows() -> dict[str, dict[str, Any]]:
    return {
        key: services.record_insert(bucket=METRICS, data={"id": key, "name": name, "value": 1, "timestamp": 1})
        for key, name in SPECIAL.items()
    }


SPECIAL_CASES = [
    ({"$contains": "%"}, ["s1", "s5"]),
    ({"$contains": "_"}, ["s1", "s3"]),
    ({"$contains": "%_"}, ["s1"]),
    ({"$contains": "50%"}, ["s1"]),
    ({"$contains": "0%"}, ["s1", "s5"]),
    ({"$contains": "a_b"}, ["s3"]),
    ({"$contains": "\\"}, ["s7"]),
    ({"$contains": "k\\s"}, ["s7"]),
    ({"$contains": "[ab]"}, ["s9"]),
    ({"$contains": "*"}, ["s9"]),
    ({"$startsWith": "50%"}, ["s1"]),
    ({"$startsWith": "50_"}, []),
    ({"$startsWith": "a_"}, ["s3"]),
    ({"$startsWith": "%"}, []),
    ({"$startsWith": "_"}, []),
    ({"$startsWith": "back\\"}, ["s7"]),
    ({"$startsWith": "x["}, ["s9"]),
    ({"$endsWith": "%"}, ["s5"]),
    ({"$endsWith": "0%"}, ["s5"]),
    ({"$endsWith": "_b"}, ["s3"]),
    ({"$endsWith": "_load"}, ["s1"]),
    ({"$endsWith": "_"}, []),
    ({"$endsWith": "\\slash"}, ["s7"]),
    ({"$endsWith": "]*"}, ["s9"]),
]


@pytest.mark.parametrize("condition, keys", SPECIAL_CASES, ids=[repr(c[0]) for c in SPECIAL_CASES])
def test_special_characters_match_literally(special_rows, condition, keys):
    check(special_rows, {"name": condition}, keys)


INVALID = [
    ({"bogus": 1}, 'Unknown field "bogus" in filter for bucket "metrics"'),
    ({"_createdBy": 1}, 'Unknown field "_createdBy" in filter for bucket "metrics"'),
    ({"key": "m1"}, 'Unknown field "key" in filter for bucket "metrics"'),  # the column, not a field
    ({"seq": 1}, 'Unknown field "seq" in filter for bucket "metrics"'),
    ({"name__startswith": "c"}, 'Unknown field "name__startswith" in filter for bucket "metrics"'),
    ({"metric": "cpu"}, 'Unknown field "metric" in filter for bucket "metrics"'),  # an alerts field
    ({"name": "cpu", "bogus": {"$eq": 1}}, 'Unknown field "bogus" in filter for bucket "metrics"'),
    ({"$or": [{"name": "cpu"}, {"bogus": 1}]}, 'Unknown field "bogus" in filter for bucket "metrics"'),
    ({"$and": [{"$or": [{"bogus": 1}]}]}, 'Unknown field "bogus" in filter for bucket "metrics"'),
    ({"$not": {"name": "cpu"}}, 'Unknown field "$not" in filter for bucket "metrics"'),
    ({"name": {"$regex": "c.*"}}, 'Unknown filter operator "$regex"'),
    ({"name": {"$eq": "cpu", "$like": "c%"}}, 'Unknown filter operator "$like"'),
    ({"$or": [{"value": {"$ne": 1}}]}, 'Unknown filter operator "$ne"'),
    ({"name": {"$in": "cpu"}}, 'Operator "$in" expects a list'),
    ({"name": {"$in": {"cpu": 1}}}, 'Operator "$in" expects a list'),
    ({"name": {"$in": None}}, 'Operator "$in" expects a list'),
    ({"name": {"$nin": "cpu"}}, 'Operator "$nin" expects a list'),
    ({"value": {"$between": 5}}, 'Operator "$between" expects a list'),
    ({"value": {"$between": {"low": 0, "high": 1}}}, 'Operator "$between" expects a list'),
    ({"value": {"$between": []}}, 'Operator "$between" expects a list of two values'),
    ({"value": {"$between": [1]}}, 'Operator "$between" expects a list of two values'),
    ({"value": {"$between": [1, 2, 3]}}, 'Operator "$between" expects a list of two values'),
    ({"unit": {"$exists": 1}}, 'Operator "$exists" expects a boolean'),
    ({"unit": {"$exists": "true"}}, 'Operator "$exists" expects a boolean'),
    ({"unit": {"$exists": None}}, 'Operator "$exists" expects a boolean'),
    ({"name": {"$eq": "cpu", "plain": 1}}, "Filter operators cannot be mixed with plain keys"),
    ({"name": {"plain": 1, "$gt": "a"}}, "Filter operators cannot be mixed with plain keys"),
    ({"name": {"$contains": 5}}, 'Operator "$contains" expects a string'),
    ({"name": {"$startsWith": None}}, 'Operator "$startsWith" expects a string'),
    ({"name": {"$endsWith": ["a"]}}, 'Operator "$endsWith" expects a string'),
    ({"$or": {"name": "cpu"}}, 'Operator "$or" expects a list of filters'),
    ({"$and": "name"}, 'Operator "$and" expects a list of filters'),
    ({"$or": ["cpu"]}, 'Missing or invalid "filter.$or": expected object'),
    ({"$and": [None]}, 'Missing or invalid "filter.$and": expected object'),
    (["name", "cpu"], 'Missing or invalid "filter": expected object'),
]


@pytest.mark.parametrize("filter_spec, message", INVALID, ids=[repr(c[0]) for c in INVALID])
def test_invalid_filter(rows, filter_spec, message):
    for read in (where, count):
        with pytest.raises(StoreError) as raised:
            read(filter_spec)
        assert (raised.value.code, raised.value.message, raised.value.details) == (
            VALIDATION_ERROR,
            message,
            None,
        )


def test_invalid_filter_is_rejected_even_without_records():
    # Validation does not depend on whether anything would be compared.
    with pytest.raises(StoreError) as raised:
        where({"bogus": 1})
    assert raised.value.code == VALIDATION_ERROR
    with pytest.raises(StoreError) as raised:
        count({"$or": [], "name": {"$between": [1]}})
    assert raised.value.code == VALIDATION_ERROR


UNICODE = {"u1": "Température", "u2": "TEMPÉRATURE", "u3": "température", "u4": "café 50%_x.y", "u5": "café 50xyx.y"}

UNICODE_CASES = [
    # $contains folds every letter, as JavaScript's toLowerCase does.
    ({"$contains": "TEMPÉ"}, ["u1", "u2", "u3"]),
    ({"$contains": "ératu"}, ["u1", "u2", "u3"]),
    ({"$contains": "Ératu"}, ["u1", "u2", "u3"]),
    ({"$contains": "ÉE"}, []),
    ({"$contains": "CAFÉ 50%_X.Y"}, ["u4"]),
    ({"$contains": "é 50%"}, ["u4"]),
    ({"$contains": "é 50_"}, []),
    ({"$contains": "é.*"}, []),
    ({"$contains": "É"}, ["u1", "u2", "u3", "u4", "u5"]),
    # $startsWith / $endsWith stay case-sensitive.
    ({"$startsWith": "Tempé"}, ["u1"]),
    ({"$startsWith": "tempé"}, ["u3"]),
    ({"$endsWith": "RATURE"}, ["u2"]),
    ({"$endsWith": "é 50%_x.y"}, ["u4"]),
    ({"$endsWith": "É 50%_x.y"}, []),
    ({"$endsWith": "%_x.y"}, ["u4"]),
]


@pytest.fixture
def unicode_rows() -> dict[str, dict[str, Any]]:
    return {
        key: services.record_insert(bucket=METRICS, data={"id": key, "name": name, "value": 1, "timestamp": 1})
        for key, name in UNICODE.items()
    }


@pytest.mark.parametrize("condition, keys", UNICODE_CASES, ids=[repr(c[0]) for c in UNICODE_CASES])
def test_non_ascii_text(unicode_rows, condition, keys):
    check(unicode_rows, {"name": condition}, keys)
