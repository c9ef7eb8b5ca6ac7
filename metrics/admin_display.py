"""How the admin shows the buckets' millisecond times: dates in the server's
time zone (settings.TIME_ZONE, DJANGO_TIME_ZONE), to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils import timezone

# Every row shows the same width, so columns line up and never wrap.
FORMAT = "%Y-%m-%d %H:%M:%S"


def ms_to_local(ms: float | None) -> datetime | None:
    """The instant in the current time zone; None when it has none (the
    protocol allows ±8.64e15 ms, datetime stops at year 9999)."""
    if ms is None:
        return None
    try:
        return timezone.localtime(datetime.fromtimestamp(ms / 1000, UTC))
    except (OverflowError, OSError, ValueError):
        return None


def ms_text(ms: float | None) -> str:
    """`2024-02-01 01:00:00.250 CET`, or the number itself outside the calendar."""
    when = ms_to_local(ms)
    if when is None:
        return "" if ms is None else f"{ms:g} ms"
    return f"{when.strftime(FORMAT)}.{when.microsecond // 1000:03d} {when.tzname()}"
