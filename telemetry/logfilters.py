"""Keeps probe and scrape requests (and browsers' /favicon.ico) out of the logs.

Load balancers probe every few seconds and Prometheus scrapes every 15 s:
their lines would bury everything else at INFO. Django's `django.request`
logs a 404 as WARNING and a 5xx as ERROR, so a missing favicon or a failing
/readyz repeat as often as they are asked; `telemetry.probes` logs readiness
changes once instead. uvicorn's access log (when on) gets the same filter
(TelemetryConfig.ready).
"""

from __future__ import annotations

import logging

# endpoints.PATHS and what browsers ask for by themselves (a test checks
# that every endpoint is here; imported by settings.LOGGING, so no imports).
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/favicon.ico"})


class QuietProbes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _path(record) not in QUIET_PATHS


def _path(record: logging.LogRecord) -> str | None:
    if record.name == "django.request":
        request = getattr(record, "request", None)
        return getattr(request, "path_info", None)
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) >= 3:
        # uvicorn's access record: (client, method, path with query, http version, status)
        return str(record.args[2]).split("?", 1)[0]
    return None
