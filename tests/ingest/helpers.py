"""What the ingest tests read back from the store."""

from __future__ import annotations

from typing import Any

from metrics.models import Metric
from metrics.schema import BUCKETS
from metrics.selectors import record_all


def stored() -> list[tuple[str, float, str, float]]:
    """Every reading as (name, value, unit, timestamp), in insertion order."""
    return list(Metric.objects.order_by("seq").values_list("name", "value", "unit", "timestamp"))


def records() -> list[dict[str, Any]]:
    """Every reading as the protocol's record."""
    return [dict(record) for record in record_all(bucket=BUCKETS["metrics"])]
