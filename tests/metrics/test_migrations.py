"""The schema the migrations leave: on PostgreSQL, the record keys have their
unique index and not the pattern index Django adds for a unique CharField
(metrics/migrations/0003)."""

from __future__ import annotations

import pytest
from django.db import connection

from metrics import services
from metrics.errors import CONFLICT, StoreError
from metrics.schema import BUCKETS


@pytest.mark.django_db
def test_record_keys_have_one_unique_index_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite makes no pattern index")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN ('metrics_metric', 'metrics_alert') "
            "AND indexdef LIKE '%(key%' ORDER BY tablename"
        )
        rows = cursor.fetchall()
    assert [(table, "UNIQUE" in definition, "pattern_ops" in definition) for table, definition in rows] == [
        ("metrics_alert", True, False),
        ("metrics_metric", True, False),
    ], rows


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bucket, data", [("metrics", {"name": "m", "value": 1}), ("alerts", {"metric": "m", "threshold": 1})]
)
def test_a_taken_key_is_still_refused(bucket, data):
    schema = BUCKETS[bucket]
    services.record_insert(bucket=schema, data={**data, "id": "k", "timestamp": 1})
    with pytest.raises(StoreError) as raised:
        services.record_insert(bucket=schema, data={**data, "id": "k", "timestamp": 2})
    assert (raised.value.code, raised.value.details) == (CONFLICT, {"bucket": bucket, "key": "k"})
