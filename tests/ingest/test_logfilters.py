"""Refused ingest requests write no log line; failures (5xx) and other paths do."""

from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.test import RequestFactory

from ingest.logfilters import QuietRefusals


def record(path: str, status: int, name: str = "django.request") -> logging.LogRecord:
    request = RequestFactory().post(path)
    return logging.makeLogRecord(
        {"name": name, "msg": "%s: %s", "args": ("x", path), "request": request, "status_code": status}
    )


@pytest.mark.parametrize("path", ["/api/metrics", "/api/v2/write", "/v1/metrics"])
@pytest.mark.parametrize("status", [400, 401, 403, 405, 409, 413, 415, 429])
def test_refusals_are_dropped(path, status):
    assert not QuietRefusals().filter(record(path, status))


@pytest.mark.parametrize(
    ("path", "status", "name"),
    [
        ("/api/metrics", 500, "django.request"),
        ("/admin/login/", 403, "django.request"),
        ("/api/metrics", 400, "django.server"),
    ],
)
def test_failures_and_other_requests_pass(path, status, name):
    assert QuietRefusals().filter(record(path, status, name))


def test_the_console_handler_uses_it():
    assert "quiet_ingest_refusals" in settings.LOGGING["handlers"]["console"]["filters"]
    assert settings.LOGGING["filters"]["quiet_ingest_refusals"] == {"()": "ingest.logfilters.QuietRefusals"}


@pytest.mark.django_db
def test_a_refused_request_reaches_no_console_line(http, capsys):
    # The root logger's console handler, as configured from settings.LOGGING.
    [console] = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters]
    seen: list[logging.LogRecord] = []

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if all(f.filter(record) for f in console.filters):
                seen.append(record)

    spy = Spy()
    logging.getLogger("django.request").addHandler(spy)
    try:
        assert http.post("/api/metrics", "{}", token="nope").status_code == 401
        assert http.post("/api/metrics", "{", token="admin-token").status_code == 400
    finally:
        logging.getLogger("django.request").removeHandler(spy)
    assert seen == []
