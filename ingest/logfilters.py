"""Keeps refused ingest requests out of the logs (settings.LOGGING).

Django's `django.request` logs every 4xx as a WARNING line, so a client
with a bad token, a malformed body or over its rate would decide how much
the server logs. Refusals are answered to the client and counted in
/metrics (`dashboard_ingest_requests_total` by result).

A failure (500) is logged by `ingest.views` with its traceback, at most once
a minute (settings.LOGGING's RepeatFilter: with the database down every
request fails alike), so Django's own line for it, which says no more than
the path, is dropped too; one with a traceback (an exception no view caught)
still passes.
"""

from __future__ import annotations

import logging

from .paths import INGEST_PATHS


class QuietRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "django.request":
            return True
        path = getattr(getattr(record, "request", None), "path_info", None)
        if path not in INGEST_PATHS:
            return True
        status = getattr(record, "status_code", None)
        if not isinstance(status, int):
            return True
        return status >= 500 and record.exc_info is not None
