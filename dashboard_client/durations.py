"""Durations as operators type them (`500ms`, `30s`, `15m`, `1h`, `7d`, `2w`),
for command-line options and settings: the client's commands use them, and so
does the server (its retention settings and `prune_metrics`)."""

from __future__ import annotations

import argparse
import re

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)\s*")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a non-negative number and a unit. A unit is required,
    since a bare `7` could mean seconds or days."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a number and a unit ({', '.join(UNITS)}), e.g. 30s, 15m, 7d"
        )
    return float(match.group(1)) * UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """An exact spelling in the largest unit up to days: 604800 -> "7d",
    90 -> "90s", 0.5 -> "500ms"."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if unit == "w":
            continue  # "7d" reads better than "1w"
        count = seconds / size
        if count >= 1 and round(count, 6) == int(round(count, 6)):
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def duration_argument(text: str) -> float:
    """`parse_duration` as an argparse `type=`: bad input is a usage error."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_duration_argument(text: str) -> float:
    seconds = duration_argument(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than zero")
    return seconds
