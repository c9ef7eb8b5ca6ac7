"""Fixtures of the ingest tests: an HTTP client that posts with a token, a live server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from ingest import rate
from tests.servers import live_server


@pytest.fixture(autouse=True)
def fresh_rate_limiter():
    rate.forget()
    yield
    rate.forget()


class Poster:
    """Posts bodies to the ingest endpoints through Django's test client."""

    def __init__(self) -> None:
        self.client = Client()

    def post(
        self,
        path: str,
        body: bytes | str,
        content_type: str | None = "application/json",
        token: str | None = "admin-token",
        scheme: str = "Bearer",
        **headers: str,
    ) -> Any:
        extra: dict[str, Any] = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
        if token is not None:
            extra["HTTP_AUTHORIZATION"] = f"{scheme} {token}"
        # Set directly: the test client leaves Content-Type out of a request
        # without a body, and CONTENT_TYPE "" is a request without the header.
        extra["CONTENT_TYPE"] = content_type or ""
        return self.client.generic("POST", path, body, **extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory, template_database):
    """A live server (uvicorn, SQLite, default limits) for the module's tests."""
    process = live_server(tmp_path_factory.mktemp("ingest"), template_database)
    yield process
    process.stop()


@pytest.fixture
def http() -> Poster:
    return Poster()


def json_body(response: Any) -> Any:
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    return json.loads(response.content)
