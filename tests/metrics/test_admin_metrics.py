"""Writes to metrics outside the protocol keep the derived tables right: the
Django admin's real views (single delete, bulk delete action, edit) and a
shell in autocommit mode. After each, the per-name figures equal a
recomputation from the readings and the tiers equal what a rebuild gives."""

from __future__ import annotations

import math

import pytest
from django.db import connection, transaction

from metrics import derived
from metrics.models import Metric

S, H, D = 1000, 3_600_000, 86_400_000
B = 19675 * D  # a day boundary


class _Rollback(Exception):
    pass


def rebuilt_rollups() -> dict:
    """The tiers a rebuild would give now, without keeping it."""
    try:
        with transaction.atomic():
            derived.rebuild()
            fresh = derived.stored_rollups()
            raise _Rollback
    except _Rollback:
        pass
    return fresh


def assert_close_rows(stored: dict, expected: dict, exact: int) -> None:
    """Same keys; the first `exact` fields of each row (counts) and every
    string (units) exactly, the other figures up to rounding."""
    assert sorted(stored) == sorted(expected), (stored, expected)
    for key, want in expected.items():
        got = stored[key]
        assert len(got) == len(want), (key, got, want)
        for i, (mine, theirs) in enumerate(zip(got, want, strict=False)):
            if i < exact or isinstance(theirs, str):
                assert mine == theirs, (key, got, want)
            else:
                assert math.isclose(mine, theirs, rel_tol=1e-9, abs_tol=1e-9), (key, got, want)


def assert_derived_right() -> None:
    assert_close_rows(derived.stored_stats(), derived.recomputed_stats(), exact=1)
    assert_close_rows(derived.stored_rollups(), rebuilt_rollups(), exact=1)


@pytest.fixture
def readings() -> dict[str, Metric]:
    """Three names over several buckets of every tier; values whose sums round."""
    rows = {
        "cpu_a": ("cpu", 0.1, "%", B + 1 * S),
        "cpu_b": ("cpu", 0.7, "%", B + 2 * S),  # cpu's max, in the first 10 s with cpu_a
        "cpu_c": ("cpu", 0.2, "%", B + H + 3 * S),
        "cpu_d": ("cpu", 0.05, "%", B + D + 4 * S),  # cpu's min
        "cpu_e": ("cpu", 0.3, "pct", B + 5 * S),  # newest by insertion
        "mem_a": ("mem", 1024.5, "MB", B + 6 * S),
        "mem_b": ("mem", 2048.25, "MB", B - 1.5),  # the day before
        "disk_a": ("disk", 33.3, "GB", B + 7 * S),
        "disk_b": ("disk", 44.4, "GB", B + 8 * S),
    }
    made = {}
    for label, (name, value, unit, ts) in rows.items():
        made[label] = Metric.objects.create(name=name, value=value, unit=unit, timestamp=ts)
    assert_derived_right()
    return made


def left() -> list[str]:
    return sorted(Metric.objects.values_list("key", flat=True))


def keys(readings: dict[str, Metric], *labels: str) -> list[str]:
    return sorted(readings[label].key for label in labels)


@pytest.mark.django_db(transaction=True)
def test_admin_single_delete_of_the_newest_and_the_max(superuser_client, readings):
    for label in ("cpu_e", "cpu_b"):  # cpu's newest by insertion, then its max
        seq = readings[label].seq
        page = superuser_client.get(f"/admin/metrics/metric/{seq}/delete/")
        assert page.status_code == 200
        response = superuser_client.post(f"/admin/metrics/metric/{seq}/delete/", {"post": "yes"})
        assert (response.status_code, response["Location"]) == (302, "/admin/metrics/metric/")
        assert_derived_right()

    assert left() == keys(readings, "cpu_a", "cpu_c", "cpu_d", "mem_a", "mem_b", "disk_a", "disk_b")
    assert_close_rows(
        derived.stored_stats(),
        {
            "cpu": (3, 0.35, 0.05, 0.2, 0.05, "%"),
            "mem": (2, 3072.75, 1024.5, 2048.25, 2048.25, "MB"),
            "disk": (2, 77.7, 33.3, 44.4, 44.4, "GB"),
        },
        exact=1,
    )


@pytest.mark.django_db(transaction=True)
def test_admin_bulk_delete_action_over_two_names(superuser_client, readings):
    chosen = ["cpu_a", "cpu_b", "cpu_d", "disk_a", "disk_b"]  # cpu's min and max, and every disk reading
    data = {"action": "delete_selected", "_selected_action": [readings[label].seq for label in chosen]}
    confirm = superuser_client.post("/admin/metrics/metric/", data)
    assert confirm.status_code == 200 and Metric.objects.count() == 9  # the confirmation page

    response = superuser_client.post("/admin/metrics/metric/", {**data, "post": "yes"})
    assert (response.status_code, response["Location"]) == (302, "/admin/metrics/metric/")

    assert left() == keys(readings, "cpu_c", "cpu_e", "mem_a", "mem_b")
    assert_derived_right()
    assert_close_rows(
        derived.stored_stats(),
        {
            "cpu": (2, 0.5, 0.2, 0.3, 0.3, "pct"),
            "mem": (2, 3072.75, 1024.5, 2048.25, 2048.25, "MB"),
        },
        exact=1,
    )
    assert not [key for key in derived.stored_rollups() if key[0] == "disk"]


@pytest.mark.django_db(transaction=True)
def test_admin_edit_that_changes_a_metrics_name_value_and_time(superuser_client, readings):
    # cpu_b, cpu's max, becomes mem's new min in another hour of another day.
    seq = readings["cpu_b"].seq
    assert superuser_client.get(f"/admin/metrics/metric/{seq}/change/").status_code == 200
    response = superuser_client.post(
        f"/admin/metrics/metric/{seq}/change/",
        {
            "name": "mem",
            "value": "-2.5",
            "unit": "MB",
            "timestamp": str(B + 2 * D + 3 * H),
            "_save": "Save",
        },
    )
    assert (response.status_code, response["Location"]) == (302, "/admin/metrics/metric/")
    moved = Metric.objects.get(seq=seq)
    assert (moved.name, moved.value, moved.unit, moved.timestamp, moved.version) == (
        "mem",
        -2.5,
        "MB",
        B + 2 * D + 3 * H,
        2,
    )

    assert_derived_right()
    assert_close_rows(
        derived.stored_stats(),
        {
            "cpu": (4, 0.65, 0.05, 0.3, 0.3, "pct"),
            # The moved reading is older by insertion than mem_b: mem's newest stays mem_b.
            "mem": (3, 3070.25, -2.5, 2048.25, 2048.25, "MB"),
            "disk": (2, 77.7, 33.3, 44.4, 44.4, "GB"),
        },
        exact=1,
    )

    # And back, changing only the value of what is now the newest of cpu.
    seq = readings["cpu_e"].seq
    response = superuser_client.post(
        f"/admin/metrics/metric/{seq}/change/",
        {
            "name": "cpu",
            "value": "9.75",
            "unit": "pct",
            "timestamp": str(B + 5 * S),
            "_save": "Save",
        },
    )
    assert response.status_code == 302
    assert_derived_right()
    assert derived.stored_stats()["cpu"][3:] == (9.75, 9.75, "pct")


@pytest.mark.django_db(transaction=True)
def test_shell_create_save_and_delete_in_autocommit_mode():
    assert connection.get_autocommit() and not connection.in_atomic_block
    low = Metric.objects.create(name="cpu", value=0.1, unit="%", timestamp=B + S)
    high = Metric.objects.create(name="cpu", value=0.7, unit="%", timestamp=B + 2 * S)
    newest = Metric.objects.create(name="cpu", value=0.2, unit="pct", timestamp=B - H - 0.5)
    assert_derived_right()
    assert_close_rows(derived.stored_stats(), {"cpu": (3, 1.0, 0.1, 0.7, 0.2, "pct")}, exact=1)

    high.value = 0.4
    high.timestamp = B + D
    high.save()
    assert_derived_right()
    assert_close_rows(derived.stored_stats(), {"cpu": (3, 0.7, 0.1, 0.4, 0.2, "pct")}, exact=1)

    newest.delete()
    assert_derived_right()
    assert_close_rows(derived.stored_stats(), {"cpu": (2, 0.5, 0.1, 0.4, 0.4, "%")}, exact=1)

    low.delete()
    high.delete()
    assert (derived.stored_stats(), derived.stored_rollups()) == ({}, {})
    assert Metric.objects.count() == 0
