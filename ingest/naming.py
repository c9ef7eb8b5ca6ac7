"""The one form in which labels (InfluxDB tags, OTLP attributes) become part
of a reading's name: `base{key=value,...}`, keys sorted, no braces without labels."""

from __future__ import annotations

import re

# Characters that would make the form ambiguous are backslash-escaped.
_SPECIAL = re.compile(r"([\\,={}])")


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def series_name(base: str, labels: dict[str, str]) -> str:
    """`cpu.usage` with {"host": "a", "dc": "x"} -> `cpu.usage{dc=x,host=a}`."""
    if not labels:
        return base
    inner = ",".join(f"{_escape(key)}={_escape(labels[key])}" for key in sorted(labels))
    return f"{base}{{{inner}}}"
