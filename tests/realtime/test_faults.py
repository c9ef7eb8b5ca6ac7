"""Faults: a database error mid-write and a client leaving mid-transaction
leave the store whole and push nothing."""

from __future__ import annotations

import logging

import pytest
from django.db import DatabaseError
from django.db.models import QuerySet

from metrics import services
from tests.conftest import metric

pytestmark = pytest.mark.django_db(transaction=True)


async def test_database_error_in_a_transaction_is_internal_and_rolls_back(connect, monkeypatch, caplog):
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    await viewer.ok("store.subscribe", query="metric-count")
    await viewer.ok("store.subscribe", query="all-metrics")
    real_insert, real_bulk_create = services._insert, QuerySet.bulk_create
    calls = []

    def failing_bulk_create(queryset, instances, *args, **kwargs):
        calls.append([instance.name for instance in instances])
        raise DatabaseError("disk I/O error at /var/lib/secret.db")

    def failing_insert(bucket, data):
        calls.append(data["name"])
        if len(calls) == 3:  # the first insert has already been written
            raise DatabaseError("disk I/O error at /var/lib/secret.db")
        return real_insert(bucket, data)

    # The multi-row insert fails; the transaction runs again one operation
    # at a time, and fails at the second.
    monkeypatch.setattr(QuerySet, "bulk_create", failing_bulk_create)
    monkeypatch.setattr(services, "_insert", failing_insert)
    with caplog.at_level(logging.ERROR):
        reply = await admin.request(
            "store.transaction",
            operations=[
                {"op": "insert", "bucket": "metrics", "data": metric("cpu")},
                {"op": "insert", "bucket": "metrics", "data": metric("mem")},
            ],
        )
    assert reply == {"id": 2, "type": "error", "code": "INTERNAL_ERROR", "message": "Internal server error"}
    assert calls == [["cpu", "mem"], "cpu", "mem"]
    assert "secret.db" in caplog.text  # details go to the log, never to the client
    assert await viewer.nothing(timeout=0.5)
    monkeypatch.setattr(services, "_insert", real_insert)
    monkeypatch.setattr(QuerySet, "bulk_create", real_bulk_create)
    assert await admin.ok("store.count", bucket="metrics") == 0
    # The connection and the store keep working.
    record = await admin.ok("store.insert", bucket="metrics", data=metric("cpu"))
    assert (await viewer.push())["data"] in (1, [record])


async def test_client_leaving_mid_transaction_leaves_the_store_whole(connect):
    admin = await connect("admin-token")
    operations = [{"op": "insert", "bucket": "metrics", "data": metric(value=i)} for i in range(500)]
    await admin.send({"id": 7, "type": "store.transaction", "operations": operations})
    await admin.communicator.disconnect()  # before the reply
    other = await connect("admin-token")
    count = await other.ok("store.count", bucket="metrics")
    # The transaction ran to its end or not at all, never halfway.
    assert count in (0, 500)
    if count == 500:
        values = sorted(r["value"] for r in await other.ok("store.all", bucket="metrics"))
        assert values == list(range(500))
