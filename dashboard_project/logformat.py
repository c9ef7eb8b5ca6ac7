"""How log records are written: plain text, or one JSON object per line.

`DJANGO_LOG_FORMAT` (`plain`, the default, or `json`) chooses for Django's
logging (settings.LOGGING) and for uvicorn's own lines (its `--log-config`,
`dashboard_project/uvicorn_logging.json`, which `./dev` passes), so a log
shipper sees one format from every process, the supervisor of several
workers included. Standard library only: uvicorn loads this before Django.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS = ("plain", "json")


class JsonFormatter(logging.Formatter):
    """One line per record: `time` (ISO 8601, UTC, milliseconds), `level`,
    `logger`, `message`, `process`, and `exc_info` / `stack_info` when set."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument that JSON cannot hold is still logged.
        return json.dumps(entry, ensure_ascii=False, default=str)


def log_format() -> str:
    """DJANGO_LOG_FORMAT, checked."""
    value = (os.environ.get("DJANGO_LOG_FORMAT") or "plain").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"DJANGO_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def from_environment() -> logging.Formatter:
    """The formatter DJANGO_LOG_FORMAT names (a dictConfig factory: `"()"`)."""
    return JsonFormatter() if log_format() == "json" else logging.Formatter(PLAIN)
