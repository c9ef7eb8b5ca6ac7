"""Keeps refused ingest requests out of the logs (settings.LOGGING).

Django's `django.request` logs every 4xx as a WARNING line, so a client
with a bad token, a malformed body or over its rate would decide how much
the server logs. Refusals are answered to the client and counted in
/metrics (`dashboard_ingest_requests_total` by result); 5xx still logged.
"""

from __future__ import annotations

import logging

from .paths import INGEST_PATHS


class QuietRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "django.request":
            return True
        path = getattr(getattr(record, "request", None), "path_info", None)
        status = getattr(record, "status_code", None)
        return not (path in INGEST_PATHS and isinstance(status, int) and status < 500)
