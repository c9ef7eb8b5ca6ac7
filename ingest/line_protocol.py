"""InfluxDB line protocol bodies (`POST /api/v2/write`) as readings.

Each line is parsed by `line_protocol_parser`; each numeric field of a line
becomes one reading named `<measurement>.<field>{tags}` (ingest.naming).
String and boolean fields are skipped: the store holds numbers.
"""

from __future__ import annotations

import time

from line_protocol_parser import LineFormatError, parse_line

from metrics.errors import VALIDATION_ERROR
from realtime.frames import UNSTORABLE_MESSAGE

from .errors import HttpError
from .naming import series_name
from .readings import Batch, Reading

# Nanoseconds per unit of each `precision`, as InfluxDB's write API names them.
NANOS_PER_UNIT = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MAX_SHOWN = 200  # characters of a bad line quoted back


def to_ms(stamp: int, precision: str) -> int:
    """A line's timestamp in whole ms since the epoch (finer parts dropped)."""
    return stamp * NANOS_PER_UNIT[precision] // 1_000_000


def precision_of(raw: str | None) -> str:
    precision = raw or "ns"
    if precision not in NANOS_PER_UNIT:
        raise HttpError(400, VALIDATION_ERROR, 'Invalid "precision": expected one of ns, us, ms, s')
    return precision


def _bad_line(number: int, text: str, message: str) -> HttpError:
    shown = text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"
    return HttpError(400, VALIDATION_ERROR, f"Line {number}: {message}", {"line": number, "text": shown})


def parse(body: bytes, precision: str) -> list[Reading]:
    """Every reading of the body, or HttpError naming the first bad line
    (1-based, with its text). Lines without a timestamp get the server's time."""
    now_ms = int(time.time() * 1000)
    batch = Batch()
    for number, raw in enumerate(body.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_line(number, raw.decode("utf-8", "replace"), "not valid UTF-8") from None
        if "\x00" in text:
            # The parser reads C strings: a NUL would cut the line short.
            raise _bad_line(number, text.replace("\x00", "\\u0000"), UNSTORABLE_MESSAGE)
        try:
            point = parse_line(text)
        except LineFormatError as error:
            raise _bad_line(number, text, str(error).rstrip(".")) from None
        if point is None:  # a comment
            continue
        stamp = now_ms if point["time"] is None else to_ms(point["time"], precision)
        tags = point["tags"]
        where = {"line": number, "text": text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"}
        for field in sorted(point["fields"]):
            value = point["fields"][field]
            if isinstance(value, (bool, str)):
                continue
            data = {"name": series_name(f"{point['measurement']}.{field}", tags), "value": value, "timestamp": stamp}
            batch.add(Reading(data, f"Line {number}", where))
    return batch.readings
