"""/metrics, /healthz and /readyz in-process: every family moves with real
protocol activity, the bearer token, readiness failures, quiet logs."""

from __future__ import annotations

import asyncio
import json
import logging
from unittest import mock

import pytest
from django.test import AsyncClient

from telemetry import endpoints, instruments, logfilters, probes
from tests.conftest import metric

from .scrape import FAMILIES, families, value

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_readiness_log():
    """Readiness failures are logged when they change, verdicts are reused a
    second: start each test unlogged and with nothing cached."""
    probes.forget()
    yield
    probes.forget()


async def scrape(**headers: str) -> str:
    response = await AsyncClient().get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


async def test_every_family_is_exposed_with_its_type():
    text = await scrape()
    exposed = families(text)
    assert {name: exposed.get(name) for name in FAMILIES} == FAMILIES


async def test_families_move_with_protocol_activity(connect):
    before = await scrape()
    admin = await connect("admin-token")
    viewer = await connect("viewer-token")
    waiting = await connect()  # connected, never logged in
    failed = await waiting.request("auth.login", token="no-such-token")
    assert failed["code"] == "UNAUTHORIZED"
    subscribed = await viewer.ok("store.subscribe", query="metric-count")
    await viewer.ok("store.subscribe", query="all-metrics")
    await admin.ok("store.subscribe", query="metric-count")  # the same live query
    await admin.ok("store.insert", bucket="metrics", data=metric())
    push = await viewer.push_for(subscribed["subscriptionId"])
    assert push["data"] == 1
    await admin.ok(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": metric(value=1)},
            {"op": "insert", "bucket": "metrics", "data": metric(value=2)},
        ],
    )
    second = await viewer.push_for(subscribed["subscriptionId"])
    assert second["data"] == 3
    after = await scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "dashboard_connections", state="authenticated") == 2
    assert value(after, "dashboard_connections", state="unauthenticated") == 1
    assert value(after, "dashboard_subscriptions") == 3
    assert value(after, "dashboard_live_queries") == 2
    assert value(after, "dashboard_layer_healthy") == 1
    assert moved("dashboard_logins_total") == 2
    assert moved("dashboard_login_failures_total") == 1
    assert moved("dashboard_write_transactions_total") == 2
    assert moved("dashboard_written_records_total") == 3
    # Two rounds; each pushed metric-count to two viewers and all-metrics to one.
    assert moved("dashboard_evaluation_seconds_count") >= 2
    assert moved("dashboard_push_latency_seconds_count") >= 2
    assert moved("dashboard_pushes_total") == 6
    # Bytes: exactly the push frames the clients received (compact ASCII JSON).
    received = [push, second, *[await viewer.push() for _ in range(2)], *[await admin.push() for _ in range(2)]]
    assert await viewer.nothing() and await admin.nothing()
    assert moved("dashboard_push_bytes_total") == sum(len(json.dumps(f, separators=(",", ":"))) for f in received)
    assert value(after, "dashboard_push_latency_seconds_sum") > value(before, "dashboard_push_latency_seconds_sum")


async def test_push_bytes_are_the_frames_sent(connect):
    viewer = await connect("viewer-token")
    admin = await connect("admin-token")
    subscribed = await viewer.ok("store.subscribe", query="metric-count")
    before = await scrape()
    await admin.ok("store.insert", bucket="metrics", data=metric())
    await viewer.push_for(subscribed["subscriptionId"])
    after = await scrape()
    frame = '{"type":"push","channel":"subscription","subscriptionId":"' + subscribed["subscriptionId"] + '","data":1}'
    assert value(after, "dashboard_pushes_total") - value(before, "dashboard_pushes_total") == 1
    assert value(after, "dashboard_push_bytes_total") - value(before, "dashboard_push_bytes_total") == len(frame)


async def test_a_connection_leaving_is_no_longer_counted(connect):
    client = await connect("viewer-token")
    await client.ok("store.subscribe", query="metric-count")
    assert value(await scrape(), "dashboard_subscriptions") == 1
    await client.communicator.disconnect()
    text = await scrape()
    assert value(text, "dashboard_subscriptions") == 0
    assert value(text, "dashboard_live_queries") == 0
    assert value(text, "dashboard_connections", state="authenticated") == 0


def test_ingest_counter_api():
    before = value_now("dashboard_ingest_requests_total", endpoint="/api/v2/write", result="204")
    instruments.ingest_request("/api/v2/write", 204)
    assert value_now("dashboard_ingest_requests_total", endpoint="/api/v2/write", result="204") == before + 1
    with pytest.raises(ValueError, match="unknown ingest endpoint"):
        instruments.ingest_request("/elsewhere", 200)
    with pytest.raises(ValueError, match="not an HTTP status code"):
        instruments.ingest_request("/api/metrics", 42)


def value_now(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the bearer token -----------------------------------------------------------------


async def test_metrics_token(settings):
    settings.DASHBOARD = {**settings.DASHBOARD, "METRICS_TOKEN": "s3cret-scrape-token"}
    client = AsyncClient()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret-scrape-token"},
        {"Authorization": "Bearer s3cret-scrape-tokenX"},
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"dashboard_" not in response.content
    text = await scrape(Authorization="Bearer s3cret-scrape-token")
    assert "dashboard_logins_total" in text
    # The probes stay open.
    assert (await client.get("/healthz")).status_code == 200


def test_bearer_token_matches():
    assert endpoints.bearer_token_matches("Bearer abc", "abc")
    assert endpoints.bearer_token_matches("bearer abc", "abc")
    assert not endpoints.bearer_token_matches("Bearer ab", "abc")
    assert not endpoints.bearer_token_matches("abc", "abc")
    assert not endpoints.bearer_token_matches("", "abc")


# --- probes -------------------------------------------------------------------------------


async def test_healthz():
    response = await AsyncClient().get("/healthz")
    assert (response.status_code, response.content, response["Content-Type"]) == (200, b"ok\n", "text/plain")
    assert response["Cache-Control"] == "no-store"


async def test_readyz_ready_without_redis(settings):
    settings.REDIS_URL = ""
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    assert json.loads(response.content) == {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}


async def test_readyz_with_redis(settings):
    from tests.servers import redis_url_if_reachable

    url = redis_url_if_reachable()
    if url is None:
        pytest.skip("no Redis on 127.0.0.1:6379")
    settings.REDIS_URL = url
    response = await AsyncClient().get("/readyz")
    assert json.loads(response.content) == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "redis": "ok"},
    }
    assert response.status_code == 200


async def test_readyz_503_when_redis_is_unreachable(settings, caplog):
    from tests.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.WARNING, logger="telemetry.probes"):
        for _ in range(3):
            response = await AsyncClient().get("/readyz")
            assert response.status_code == 503
            assert json.loads(response.content) == {
                "status": "unavailable",
                "checks": {"database": "ok", "migrations": "ok", "redis": "unreachable"},
            }
    # Logged once, with the reason, not once per probe.
    lines = [r.getMessage() for r in caplog.records if r.name == "telemetry.probes"]
    assert len(lines) == 1 and lines[0].startswith("readiness: redis unreachable: "), lines


async def test_readyz_503_when_the_database_fails(monkeypatch):
    monkeypatch.setattr("telemetry.probes._database_ping", _unreachable)
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert json.loads(response.content)["checks"]["database"] == "unreachable"


async def test_readyz_timeout(monkeypatch):
    import time

    monkeypatch.setattr("telemetry.probes.DATABASE_TIMEOUT_SECONDS", 0.2)
    monkeypatch.setattr("telemetry.probes._database_ping", lambda: time.sleep(0.5))
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert json.loads(response.content)["checks"]["database"] == "timeout"


class Counted:
    """Counts the calls of one of `telemetry.probes`' checks, which still runs."""

    def __init__(self, monkeypatch, name: str, pause: float = 0.0) -> None:
        self.calls = 0
        self.real = getattr(probes, name)
        self.pause = pause
        monkeypatch.setattr(probes, name, self.check)

    async def check(self, *args):
        self.calls += 1
        await asyncio.sleep(self.pause)  # a slow database: later probes arrive meanwhile
        return await self.real(*args)


@pytest.fixture
def frozen_clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(probes, "clock", lambda: now[0])
    return now


async def test_probes_in_quick_succession_run_the_checks_once(settings, monkeypatch, frozen_clock):
    settings.REDIS_URL = ""
    database = Counted(monkeypatch, "check_database")
    ready = {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}}
    for _ in range(2):
        response = await AsyncClient().get("/readyz")
        assert (response.status_code, json.loads(response.content)) == (200, ready)
    assert database.calls == 1
    frozen_clock[0] += probes.CACHE_SECONDS
    response = await AsyncClient().get("/readyz")
    assert (response.status_code, json.loads(response.content)) == (200, ready)
    assert database.calls == 2


async def test_concurrent_probes_share_one_round_of_checks(settings, monkeypatch, frozen_clock):
    from tests.servers import free_port

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    database = Counted(monkeypatch, "check_database", pause=0.2)
    redis = Counted(monkeypatch, "check_redis")
    responses = await asyncio.gather(*(AsyncClient().get("/readyz") for _ in range(3)))
    failing = {"status": "unavailable", "checks": {"database": "ok", "migrations": "ok", "redis": "unreachable"}}
    assert [(r.status_code, json.loads(r.content)) for r in responses] == [(503, failing)] * 3
    assert (database.calls, redis.calls) == (1, 1)


async def test_applied_migrations_are_checked_once(settings, monkeypatch, frozen_clock):
    settings.REDIS_URL = ""
    counted = mock.Mock(wraps=probes.migrations_applied)
    monkeypatch.setattr(probes, "migrations_applied", counted)
    for _ in range(3):
        response = await AsyncClient().get("/readyz")
        assert response.status_code == 200
        frozen_clock[0] += probes.CACHE_SECONDS
    assert counted.call_count == 1


async def test_readyz_503_while_migrations_are_pending(settings, monkeypatch, frozen_clock, caplog):
    # The real check on an unmigrated database: tests/telemetry/test_live.py.
    settings.REDIS_URL = ""
    pending = [True]
    monkeypatch.setattr(probes, "migrations_applied", lambda: not pending[0])
    with caplog.at_level(logging.WARNING, logger="telemetry.probes"):
        for _ in range(2):
            response = await AsyncClient().get("/readyz")
            assert (response.status_code, json.loads(response.content)) == (
                503,
                {"status": "unavailable", "checks": {"database": "ok", "migrations": "pending"}},
            )
            frozen_clock[0] += probes.CACHE_SECONDS
        pending[0] = False
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "telemetry.probes"]
    assert lines == [
        "readiness: migrations pending: MigrationsPending: run ./dev migrate",
        "readiness: migrations applied",
    ]


async def test_migrations_are_unknown_while_the_database_does_not_answer(monkeypatch):
    monkeypatch.setattr("telemetry.probes._database_ping", _unreachable)
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert json.loads(response.content)["checks"] == {"database": "unreachable", "migrations": "unknown"}


async def test_only_get_and_head():
    for path in endpoints.PATHS:
        response = await AsyncClient().post(path)
        assert (response.status_code, response["Allow"]) == (405, "GET, HEAD"), path


# --- logs -----------------------------------------------------------------------------------


def test_every_endpoint_is_quiet():
    assert endpoints.PATHS <= logfilters.QUIET_PATHS


def record(name: str, path: str, args: tuple = ()) -> logging.LogRecord:
    class Request:
        path_info = path

    entry = logging.LogRecord(name, logging.WARNING, __file__, 1, "Not Found: %s", args or (path,), None)
    entry.request = Request()  # type: ignore[attr-defined]
    return entry


def test_quiet_probes_filter():
    quiet = logfilters.QuietProbes()
    assert not quiet.filter(record("django.request", "/favicon.ico"))
    assert not quiet.filter(record("django.request", "/readyz"))
    assert quiet.filter(record("django.request", "/nowhere"))
    access = ("127.0.0.1:5000", "GET", "/healthz?x=1", "1.1", 200)
    assert not quiet.filter(
        logging.LogRecord("uvicorn.access", logging.INFO, "", 1, '%s - "%s %s HTTP/%s" %d', access, None)
    )
    other = ("127.0.0.1:5000", "GET", "/admin/", "1.1", 200)
    assert quiet.filter(
        logging.LogRecord("uvicorn.access", logging.INFO, "", 1, '%s - "%s %s HTTP/%s" %d', other, None)
    )
    assert quiet.filter(logging.LogRecord("realtime.hub", logging.INFO, "", 1, "/healthz", (), None))


async def test_a_failing_readyz_is_not_logged_per_request(caplog, monkeypatch):
    """Django logs every 5xx as ERROR on django.request; a load balancer asks
    every few seconds. The console handler's filter drops those lines."""
    handler = logging.getLogger().handlers[0]
    assert any(isinstance(f, logfilters.QuietProbes) for f in handler.filters)
    monkeypatch.setattr("telemetry.probes._database_ping", _unreachable)
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    # The record is made; the console handler's filter drops it.
    records = [r for r in caplog.records if r.name == "django.request"]
    assert records and not any(handler.filter(r) for r in records)


def _unreachable() -> None:
    from django.db import OperationalError

    raise OperationalError("connection refused")


# --- HTTP ingest, counted by endpoint and result ----------------------------------------------


async def test_ingest_requests_are_counted_by_endpoint_and_result():
    client = AsyncClient()
    series = "dashboard_ingest_requests_total"
    before = await scrape()
    reading = json.dumps({"name": "cpu", "value": 1.5, "timestamp": 1706745600000})
    admin = {"Authorization": "Bearer admin-token"}
    answers = [
        await client.post("/api/metrics", reading, content_type="application/json", headers=admin),
        await client.post("/api/metrics", reading, content_type="application/json"),
        await client.post(
            "/api/v2/write", "cpu usage=72.5 1706745600000000000", content_type="text/plain", headers=admin
        ),
        await client.post("/api/v2/write", "cpu usage=", content_type="text/plain", headers=admin),
        await client.post("/v1/metrics", "{}", content_type="application/json", headers=admin),
    ]
    assert [a.status_code for a in answers] == [201, 401, 204, 400, 200]
    after = await scrape()
    expected = {
        ("/api/metrics", "201"): 1,
        ("/api/metrics", "401"): 1,
        ("/api/v2/write", "204"): 1,
        ("/api/v2/write", "400"): 1,
        ("/v1/metrics", "200"): 1,
    }
    moved = {
        key: value(after, series, endpoint=key[0], result=key[1])
        - value(before, series, endpoint=key[0], result=key[1])
        for key in expected
    }
    assert moved == expected
