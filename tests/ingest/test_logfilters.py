"""Refused ingest requests write no log line; failures (5xx) and other paths do."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from django.conf import settings
from django.db import OperationalError
from django.test import RequestFactory

from dashboard_project.logfilters import RepeatFilter
from ingest import views
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


def test_djangos_line_for_a_500_the_view_answered_is_dropped():
    # The view logged the cause itself (bounded); Django's line has no more.
    assert not QuietRefusals().filter(record("/api/metrics", 500))


def test_a_500_with_a_traceback_passes():
    failing = record("/v1/metrics", 500)
    try:
        raise RuntimeError("no view caught this")
    except RuntimeError:
        failing.exc_info = sys.exc_info()
    assert QuietRefusals().filter(failing)


@pytest.mark.parametrize(
    ("path", "status", "name"),
    [
        ("/admin/login/", 500, "django.request"),
        ("/admin/login/", 403, "django.request"),
        ("/api/metrics", 400, "django.server"),
    ],
)
def test_failures_and_other_requests_pass(path, status, name):
    assert QuietRefusals().filter(record(path, status, name))


def test_the_console_handler_uses_it():
    assert "quiet_ingest_refusals" in settings.LOGGING["handlers"]["console"]["filters"]
    assert settings.LOGGING["filters"]["quiet_ingest_refusals"] == {"()": "ingest.logfilters.QuietRefusals"}


def console_handler() -> logging.Handler:
    """The root logger's console handler, as configured from settings.LOGGING."""
    [console] = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters]
    return console


class ConsoleSpy(logging.Handler):
    """Keeps the records of `loggers` that the console handler would write."""

    def __init__(self, *loggers: str) -> None:
        super().__init__()
        self.console = console_handler()
        self.loggers = loggers
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if all(f.filter(record) for f in self.console.filters):
            self.seen.append(record)

    def __enter__(self) -> ConsoleSpy:
        for name in self.loggers:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.loggers:
            logging.getLogger(name).removeHandler(self)


@pytest.mark.django_db
def test_a_refused_request_reaches_no_console_line(http, capsys):
    with ConsoleSpy("django.request") as spy:
        assert http.post("/api/metrics", "{}", token="nope").status_code == 401
        assert http.post("/api/metrics", "{", token="admin-token").status_code == 400
    assert spy.seen == []


@pytest.mark.django_db
def test_failures_while_the_database_is_down_log_one_traceback_a_minute(http, monkeypatch):
    def database_down(readings):
        raise OperationalError("connection to server failed: Connection refused")

    monkeypatch.setattr(views, "store", database_down)
    [repeats] = [f for f in console_handler().filters if isinstance(f, RepeatFilter)]
    now = [1e9]  # past any run an earlier test started on the real clock
    monkeypatch.setattr(repeats, "clock", lambda: now[0])
    body = '{"name": "cpu", "value": 1, "timestamp": 1}'
    written = io.StringIO()
    monkeypatch.setattr(console_handler(), "stream", written)
    for _ in range(5):
        response = http.post("/api/metrics", body)
        assert (response.status_code, response.json()) == (
            500,
            {"code": "INTERNAL_ERROR", "message": "Internal server error"},
        )
    now[0] += 60
    assert http.post("/api/metrics", body).status_code == 500
    text = written.getvalue()
    # Six failures: two tracebacks, the second counting the four held back;
    # no line of Django's own.
    assert text.count("Traceback (most recent call last)") == 2
    assert text.count("OperationalError: connection to server failed: Connection refused") == 2
    assert text.count("ingest request to /api/metrics failed") == 2
    assert "ingest request to /api/metrics failed [4 more like this in the last 60 s]" in text
    assert "Internal Server Error" not in text
