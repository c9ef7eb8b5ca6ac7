"""Retention settings read from the environment: durations, `forever`, and a
clear start-up error for anything else."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard_project.settings import env_retention


def test_durations_and_forever(monkeypatch):
    monkeypatch.setenv("DASHBOARD_RETENTION_RAW", "36h")
    monkeypatch.setenv("DASHBOARD_RETENTION_1H", " Forever ")
    monkeypatch.delenv("DASHBOARD_RETENTION_1M", raising=False)
    assert env_retention("DASHBOARD_RETENTION_RAW", "7d") == 36 * 3600
    assert env_retention("DASHBOARD_RETENTION_1H", "7d") is None
    assert env_retention("DASHBOARD_RETENTION_1M", "90d") == 90 * 86400


@pytest.mark.parametrize("value", ["7", "seven days", "-1d", "never"])
def test_anything_else_stops_the_start_with_the_variable_named(monkeypatch, value):
    monkeypatch.setenv("DASHBOARD_RETENTION_RAW", value)
    with pytest.raises(ImproperlyConfigured) as raised:
        env_retention("DASHBOARD_RETENTION_RAW", "7d")
    assert str(raised.value).startswith(f"DASHBOARD_RETENTION_RAW: invalid duration {value.strip()!r}")
    assert str(raised.value).endswith("(or 'forever')")
