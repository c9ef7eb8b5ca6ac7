"""PostgreSQL only: drops the second index Django makes for a unique CharField.

Beside the unique index, Django's PostgreSQL backend gives a unique
`CharField` an index with `varchar_pattern_ops`, which serves only `LIKE`
queries. Keys are looked up by equality, which the unique index serves; the
other one cost 730 MB at 10,000,000 readings and an update on every insert.
Its name is generated, so it is found by its definition. SQLite makes no
such index (and would have to copy the whole table to change the field),
so nothing happens there. The model keeps `unique=True`, so a later
migration that alters the `key` field would make the index again
(tests/metrics/test_migrations.py checks that none is there).
"""

from django.db import migrations

TABLES = ("metrics_metric", "metrics_alert")


def drop_pattern_indexes(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = ANY(%s) "
            "AND indexdef LIKE %s",
            [list(TABLES), "%(key varchar_pattern_ops)%"],
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f"DROP INDEX {connection.ops.quote_name(name)}")


class Migration(migrations.Migration):
    dependencies = [
        ("metrics", "0002_history"),
    ]

    operations = [
        migrations.RunPython(drop_pattern_indexes, migrations.RunPython.noop),
    ]
