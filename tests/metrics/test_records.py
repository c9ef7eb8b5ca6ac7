"""The read cache of committed records (metrics/records.py): what it serves
is what the database holds, and only committed rows enter it."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from metrics import records, selectors, services
from metrics.errors import CONFLICT
from metrics.models import Metric
from metrics.schema import BUCKETS

METRICS = BUCKETS["metrics"]

pytestmark = pytest.mark.django_db(transaction=True)


def row(name: str = "cpu", value: float = 1, **extra) -> dict:
    return {"name": name, "value": value, "unit": "%", "timestamp": 1, **extra}


def cached(seq: int) -> records.Record | None:
    return records._cache.get(("metrics", seq))


def from_database(seq: int) -> records.Record:
    return records.fetch_by_seq(METRICS, [seq])[seq]


@pytest.mark.parametrize(
    "data",
    [
        row(value=5, unit=""),
        row(value=-0.1, timestamp=1_706_745_600_123.5),
        row(name="température ✓ 𝄞", value=1e300, unit="°C"),
        row(value=2**60, timestamp=0),
    ],
)
def test_an_insert_is_cached_on_commit_exactly_as_it_reads_back(data):
    record = services.record_insert(bucket=METRICS, data=data)
    seq = Metric.objects.get(key=record["id"]).seq
    assert cached(seq) is record
    assert record == from_database(seq) and record.version == from_database(seq).version == 1
    assert record.json() == from_database(seq).json()


def test_an_update_replaces_the_cached_version():
    inserted = services.record_insert(bucket=METRICS, data=row())
    updated = services.record_update(bucket=METRICS, key=inserted["id"], data={"value": 9})
    seq = Metric.objects.get(key=inserted["id"]).seq
    assert cached(seq) is updated
    assert updated == from_database(seq) and updated["_version"] == updated.version == 2


def test_reactive_reads_after_a_write_take_the_new_record_from_the_cache(django_assert_num_queries):
    for i in range(3):
        services.record_insert(bucket=METRICS, data=row(value=i))
    expected = selectors.record_all(bucket=METRICS)
    # One query: the (seq, version) identities; every record is a cache hit.
    with django_assert_num_queries(1):
        assert selectors.record_all(bucket=METRICS) == expected
    newest = services.record_insert(bucket=METRICS, data=row(value=3))
    with django_assert_num_queries(1):
        assert selectors.record_all(bucket=METRICS) == [*expected, newest]


def test_a_rolled_back_transaction_caches_nothing():
    records.clear_cache()
    with pytest.raises(RuntimeError), transaction.atomic():
        services.record_insert(bucket=METRICS, data=row())
        raise RuntimeError("abort")
    assert records._cache == {} and Metric.objects.count() == 0


def test_rows_saved_inside_a_savepoint_are_not_cached_even_when_it_is_kept():
    # A savepoint rolled back on its own would leave a seq SQLite may reuse
    # for another row with the same version; such rows are read back instead.
    records.clear_cache()
    with transaction.atomic():
        kept = services.record_insert(bucket=METRICS, data=row(name="kept"))
        with pytest.raises(IntegrityError), transaction.atomic():
            services.record_insert(bucket=METRICS, data=row(name="dropped"))
            raise IntegrityError("roll back this savepoint only")
    assert records._cache == {}
    assert [r["name"] for r in selectors.record_all(bucket=METRICS)] == ["kept"]
    assert selectors.record_all(bucket=METRICS) == [kept]


def test_a_failed_insert_in_a_transaction_caches_nothing_it_wrote():
    records.clear_cache()
    first = services.record_insert(bucket=METRICS, data=row(id="k1"))
    records.clear_cache()
    with pytest.raises(services.OperationFailed) as failure:
        services.transaction_run(
            operations=[
                services.Operation(op="insert", bucket=METRICS, args={"data": row(id="k2")}),
                services.Operation(op="insert", bucket=METRICS, args={"data": row(id="k1")}),  # CONFLICT
            ]
        )
    assert (failure.value.index, failure.value.code) == (1, CONFLICT)
    assert records._cache == {}
    assert selectors.record_all(bucket=METRICS) == [first]
    assert not connection.in_atomic_block


def test_reading_by_seq_gives_what_the_orm_gives_in_chunks_of_bound_parameters():
    services.transaction_run(
        operations=[
            services.Operation(
                op="insert", bucket=METRICS, args={"data": row(name=f"n{i % 7} é", value=i / 3, unit="u" * (i % 5))}
            )
            for i in range(950)
        ]
    )
    instances = list(Metric.objects.all())
    fetched = records.fetch_by_seq(METRICS, [m.seq for m in reversed(instances)] + [10**12])
    assert fetched == {m.seq: records.from_instance(METRICS, m) for m in instances}
    assert [record.version for record in fetched.values()] == [1] * 950
