"""Quiet, machine-readable logs and a favicon answered without a WARNING
(issue 16): DJANGO_LOG_FORMAT=json, uvicorn's per-WebSocket lines kept for
the access log, /favicon.ico, and the HSTS defaults of a production start."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys

import pytest

from dashboard_project.accesslog import WebSocketLinesFilter
from dashboard_project.logformat import JsonFormatter, from_environment
from tests.servers import PROJECT_DIR


def record(name: str, level: int, msg: str, *args, exc_info=None) -> logging.LogRecord:
    made = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    made.created = 1_796_000_000.25  # 2026-11-30T00:53:20.250Z
    made.process = 4242
    return made


def test_json_lines_hold_time_level_logger_message_and_process():
    line = JsonFormatter().format(record("uvicorn.error", logging.INFO, "Uvicorn running on %s", "http://x:1"))
    assert json.loads(line) == {
        "time": "2026-11-30T00:53:20.250+00:00",
        "level": "INFO",
        "logger": "uvicorn.error",
        "message": "Uvicorn running on http://x:1",
        "process": 4242,
    }
    assert "\n" not in line


def test_json_lines_carry_the_traceback_in_one_field():
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record("realtime", logging.ERROR, "failed %d", 3, exc_info=info)))
    assert set(entry) == {"time", "level", "logger", "message", "process", "exc_info"}
    assert entry["message"] == "failed 3" and entry["level"] == "ERROR"
    assert entry["exc_info"].startswith("Traceback") and entry["exc_info"].endswith("ValueError: boom")


def test_the_format_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_LOG_FORMAT", "json")
    assert isinstance(from_environment(), JsonFormatter)
    monkeypatch.setenv("DJANGO_LOG_FORMAT", "plain")
    plain = from_environment()
    assert not isinstance(plain, JsonFormatter)
    assert plain.format(record("x", logging.WARNING, "hi")).endswith(" WARNING x hi")
    monkeypatch.setenv("DJANGO_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="DJANGO_LOG_FORMAT must be one of plain, json, not 'xml'"):
        from_environment()


def test_websocket_connection_lines_pass_only_with_the_access_log():
    lines = [
        record("uvicorn.error", logging.INFO, '%s - "WebSocket %s" [accepted]', "1.2.3.4:5", "/ws/"),
        record("uvicorn.error", logging.INFO, "connection open"),
        record("uvicorn.error", logging.INFO, "connection closed"),
    ]
    others = [
        record("uvicorn.error", logging.INFO, "Uvicorn running on %s (Press CTRL+C to quit)", "http://x:1"),
        record("uvicorn.error", logging.WARNING, "connection closed"),
    ]
    quiet, loud = WebSocketLinesFilter(enabled=False), WebSocketLinesFilter(enabled=True)
    assert [quiet.filter(r) for r in lines + others] == [False, False, False, True, True]
    assert all(loud.filter(r) for r in lines + others)


def production(*command: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DASHBOARD_"))}
    environment.update(
        DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_ALLOWED_HOSTS="dash.example.com", **env
    )
    return subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=PROJECT_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


HSTS = "from django.conf import settings as s; print(s.SECURE_HSTS_SECONDS, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_HSTS_PRELOAD, s.CSRF_TRUSTED_ORIGINS)"


def test_hsts_subdomains_and_preload_are_off_unless_asked_for():
    result = production("shell", "-v0", "-c", HSTS)
    assert (result.returncode, result.stdout) == (0, "31536000 False False []\n"), result.stderr
    result = production(
        "shell",
        "-v0",
        "-c",
        HSTS,
        DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS="1",
        DJANGO_SECURE_HSTS_PRELOAD="1",
        DJANGO_SECURE_HSTS_SECONDS="600",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://dash.example.com,https://b.example.com",
    )
    assert (result.returncode, result.stdout) == (
        0,
        "600 True True ['https://dash.example.com', 'https://b.example.com']\n",
    ), result.stderr


def test_an_unknown_log_format_stops_the_start_with_its_name():
    result = production("check", DJANGO_LOG_FORMAT="yaml")
    assert result.returncode != 0
    assert "ImproperlyConfigured: DJANGO_LOG_FORMAT must be one of plain, json, not 'yaml'" in result.stderr


def test_favicon_redirects_to_the_static_icon_without_a_warning(client, caplog):
    with caplog.at_level(logging.INFO):
        response = client.get("/favicon.ico")
        assert (response.status_code, response["Location"]) == (302, "/static/dashboard/favicon.svg")
        icon = client.get(response["Location"])
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml"
    assert b"<svg" in b"".join(icon.streaming_content)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
