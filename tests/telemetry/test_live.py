"""/metrics, /healthz and /readyz on real server processes: a production
configuration (DEBUG off, TLS redirect on) probed over plain HTTP by IP,
readiness failures, several uvicorn workers in prometheus-client's
multiprocess mode, and a real Prometheus scraping with the bearer token."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from bench.servers import Process
from tests.servers import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    Server,
    free_port,
    live_server,
    open_client,
    server_env,
    template_database,  # noqa: F401 (a fixture)
    unavailable,
    uvicorn_argv,
)
from tests.telemetry.scrape import FAMILIES, families, value

pytestmark = pytest.mark.multiprocess

PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "telemetry-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    "DJANGO_ALLOWED_HOSTS": "dashboard.example.com",
}
TOKEN = "scrape-token-for-tests"
POD_IP_HOST = "10.1.2.3:8000"


def get(port: int, path: str, host: str = "127.0.0.1", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """A plain-HTTP GET (no redirect followed): status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host, **headers})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def copy_template(template: Path, workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        source = template / f"db.sqlite3{suffix}"
        if source.exists():
            shutil.copyfile(source, workdir / source.name)
    return f"sqlite:///{(workdir / 'db.sqlite3').resolve()}"


def started(server: Process) -> Process:
    server.start()
    return server


@pytest.fixture
def stop_after():
    servers: list[Process] = []
    yield servers.append
    for server in servers:
        server.stop()


# --- a production-configured server -------------------------------------------------------


def test_probes_over_plain_http_with_the_tls_redirect_on(tmp_path, template_database, stop_after):  # noqa: F811
    server = live_server(tmp_path, template_database, **PRODUCTION)
    stop_after(server)
    # A load balancer probes the process by its address, over plain HTTP.
    for host in (POD_IP_HOST, "dashboard.example.com"):
        assert get(server.port, "/healthz", host)[::2] == (200, b"ok\n")
        status, headers, body = get(server.port, "/readyz", host)
        assert (status, json.loads(body)) == (
            200,
            {"status": "ready", "checks": {"database": "ok", "migrations": "ok"}},
        )
        assert headers["content-type"] == "application/json"
        status, headers, body = get(server.port, "/metrics", host)
        assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
        assert {name: families(body.decode()).get(name) for name in FAMILIES} == FAMILIES
    # Everything else still redirects to HTTPS and checks the host.
    status, headers, _ = get(server.port, "/", "dashboard.example.com")
    assert (status, headers["location"]) == (301, "https://dashboard.example.com/")
    assert get(server.port, "/", POD_IP_HOST)[0] == 400
    server.stop()
    assert "healthz" not in server.log() and "readyz" not in server.log()


def test_metrics_token_on_a_server(tmp_path, template_database, stop_after):  # noqa: F811
    server = live_server(tmp_path, template_database, **PRODUCTION, DASHBOARD_METRICS_TOKEN=TOKEN)
    stop_after(server)
    assert get(server.port, "/metrics", POD_IP_HOST)[0] == 401
    assert get(server.port, "/metrics", POD_IP_HOST, Authorization="Bearer nope")[0] == 401
    status, _, body = get(server.port, "/metrics", POD_IP_HOST, Authorization=f"Bearer {TOKEN}")
    assert status == 200 and b"dashboard_logins_total" in body
    assert get(server.port, "/healthz", POD_IP_HOST)[0] == 200


def test_readyz_503_when_redis_is_unreachable(tmp_path, template_database, stop_after):  # noqa: F811
    closed = f"redis://127.0.0.1:{free_port()}/0"
    server = live_server(tmp_path, template_database, **PRODUCTION, REDIS_URL=closed)
    stop_after(server)
    status, _, body = get(server.port, "/readyz", POD_IP_HOST)
    assert (status, json.loads(body)) == (
        503,
        {"status": "unavailable", "checks": {"database": "ok", "migrations": "ok", "redis": "unreachable"}},
    )
    assert get(server.port, "/healthz", POD_IP_HOST)[0] == 200


def test_readyz_503_on_an_unmigrated_database(tmp_path, stop_after):
    # A server started (bypassing ./dev serve's own check) on an empty database.
    env = server_env(f"sqlite:///{(tmp_path / 'empty.sqlite3').resolve()}", **PRODUCTION)
    port = free_port()
    server = Server("unmigrated", uvicorn_argv(port), env, tmp_path / "server.log", port, start_timeout=START_TIMEOUT)
    stop_after(started(server))
    status, _, body = get(port, "/readyz", POD_IP_HOST)
    assert (status, json.loads(body)) == (
        503,
        {"status": "unavailable", "checks": {"database": "ok", "migrations": "pending"}},
    )
    server.stop()
    assert server.log().count("readiness: migrations pending") == 1


def test_readyz_503_when_the_database_is_unreachable(tmp_path, stop_after):
    # PostgreSQL on a port nothing listens on.
    env = server_env(f"postgres://postgres@127.0.0.1:{free_port()}/nothing", **PRODUCTION)
    port = free_port()
    server = Server("no-db", uvicorn_argv(port), env, tmp_path / "server.log", port, start_timeout=START_TIMEOUT)
    stop_after(started(server))
    for _ in range(2):
        status, _, body = get(port, "/readyz", POD_IP_HOST)
        assert (status, json.loads(body)) == (
            503,
            {"status": "unavailable", "checks": {"database": "unreachable", "migrations": "unknown"}},
        )
    assert get(port, "/healthz", POD_IP_HOST)[0] == 200
    server.stop()
    # Said once, with the reason; never one line per probe.
    log = server.log()
    assert log.count("readiness: database unreachable: OperationalError") == 1, log
    assert "Service Unavailable" not in log  # django.request's ERROR line per 503, filtered


# --- several workers: multiprocess mode ------------------------------------------------------


async def wait_for_scrape(port: int, check, timeout: float = 10.0) -> str:
    """Scrapes until `check(text)` holds (gauges are written every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200, body
        text = body.decode()
        if check(text) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.2)


async def test_multiprocess_mode_with_two_workers(tmp_path, template_database, stop_after):  # noqa: F811
    directory = tmp_path / "prometheus-multiproc"  # not there yet: the server makes it
    env = server_env(copy_template(template_database, tmp_path), PROMETHEUS_MULTIPROC_DIR=str(directory))
    port = free_port()
    argv = [*uvicorn_argv(port), "--workers", "2"]
    server = Server("workers", argv, env, tmp_path / "server.log", port, start_timeout=START_TIMEOUT)
    stop_after(started(server))
    url = f"ws://127.0.0.1:{port}/ws/"
    clients = [await open_client(url, f"c{i}", "admin-token" if i < 3 else None) for i in range(5)]
    try:
        expected = {"authenticated": 3.0, "unauthenticated": 2.0}

        def counted(text: str) -> bool:
            return {state: value(text, "dashboard_connections", state=state) for state in expected} == expected

        text = await wait_for_scrape(port, counted)
        assert counted(text), text
        # Multiprocess mode shows a labelled family only once a child exists:
        # no ingest request was made.
        unlabelled = {name: kind for name, kind in FAMILIES.items() if name != "dashboard_ingest_requests"}
        assert {name: families(text).get(name) for name in unlabelled} == unlabelled
        assert value(text, "dashboard_logins_total") == 3
    finally:
        for client in clients:
            await client.close()
    text = await wait_for_scrape(port, lambda t: value(t, "dashboard_connections", state="authenticated") == 0)
    assert value(text, "dashboard_connections", state="authenticated") == 0
    assert value(text, "dashboard_logins_total") == 3  # counters outlive connections
    assert any(directory.glob("counter_*.db")) and any(directory.glob("gauge_livesum_*.db"))


# --- a real Prometheus -----------------------------------------------------------------------------


def prometheus_binaries() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        unavailable("prometheus is not installed (Debian: apt-get install -y prometheus; .ci/run installs it)")
    return prometheus, promtool  # type: ignore[return-value]


def query(port: int, promql: str) -> list[dict]:
    status, _, body = get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


async def test_a_real_prometheus_scrapes_with_the_token(tmp_path, template_database, stop_after):  # noqa: F811
    prometheus, promtool = prometheus_binaries()
    server = live_server(tmp_path / "server", template_database, DASHBOARD_METRICS_TOKEN=TOKEN)
    stop_after(server)
    admin = await open_client(server.ws, "admin", "admin-token")
    try:
        await admin.ok("store.subscribe", query="metric-count")
        await admin.ok("store.insert", bucket="metrics", data={"name": "cpu", "value": 1, "timestamp": 1})
        await admin.push()
        # promtool's linter on what we expose (text format, as curl gets it).
        status, _, body = get(server.port, "/metrics", Authorization=f"Bearer {TOKEN}")
        assert status == 200
        lint = await asyncio.to_thread(
            subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
        )
        assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()

        # A port of our own: the Debian package's service (if one runs) holds 9090.
        web_port = free_port()
        config = tmp_path / "prometheus.yml"
        target = f"127.0.0.1:{server.port}"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: dashboard\n    authorization:\n      credentials: {TOKEN}\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
            "  - job_name: wrong-token\n    authorization:\n      credentials: not-the-token\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        argv = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ]
        scraper = Process(
            "prometheus",
            argv,
            dict(os.environ),
            tmp_path / "prometheus.log",
            web_port,
            start_timeout=START_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        )
        stop_after(started(scraper))
        # Each job's first scrape comes at its own offset within the interval.
        deadline = time.monotonic() + 30
        while True:
            up = {r["metric"]["job"]: r["value"][1] for r in await asyncio.to_thread(query, web_port, "up")}
            if len(up) == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        # The scrape without the right token is refused (401), the other one is up.
        assert up == {"dashboard": "1", "wrong-token": "0"}
        logins = await asyncio.to_thread(query, web_port, 'dashboard_logins_total{job="dashboard"}')
        assert [float(r["value"][1]) for r in logins] == [1.0], logins
        for promql, expected in (
            ('dashboard_connections{job="dashboard",state="authenticated"}', 1.0),
            ('dashboard_subscriptions{job="dashboard"}', 1.0),
            ('dashboard_live_queries{job="dashboard"}', 1.0),
            ('dashboard_write_transactions_total{job="dashboard"}', 1.0),
            ('dashboard_pushes_total{job="dashboard"}', 1.0),
            ('dashboard_evaluation_seconds_count{job="dashboard"}', 1.0),
        ):
            result = await asyncio.to_thread(query, web_port, promql)
            assert [float(r["value"][1]) for r in result] == [expected], (promql, result)
        names = await asyncio.to_thread(lambda: json.loads(get(web_port, "/api/v1/label/__name__/values")[2])["data"])
        for family, kind in FAMILIES.items():
            wanted = {"counter": f"{family}_total", "histogram": f"{family}_bucket", "gauge": family}[kind]
            if family != "dashboard_ingest_requests":  # no series until a first ingest request
                assert wanted in names, wanted
    finally:
        await admin.close()


# --- slow readers and a lost layer, as /metrics tells them ----------------------------------


async def scrape_now(port: int) -> str:
    status, _, body = await asyncio.to_thread(get, port, "/metrics")
    assert status == 200, body
    return body.decode()


async def test_slow_reader_counters(tmp_path, template_database, stop_after):  # noqa: F811
    """A viewer that stops reading: its outbox fills (outbox bytes), newer
    results replace queued ones (coalesced pushes), and past
    DASHBOARD_MAX_OUTBOX_BYTES it is closed (slow-consumer closes)."""
    limit = 24 * 1024 * 1024
    server = live_server(
        tmp_path, template_database, DASHBOARD_MAX_OUTBOX_BYTES=str(limit), DASHBOARD_HEARTBEAT_SECONDS="3600"
    )
    stop_after(server)
    admin = await open_client(server.ws, "admin", "admin-token")
    # max_queue=1: the client library stops reading the socket once one
    # message waits, like a stalled browser tab.
    stalled = await open_client(server.ws, "stalled", "viewer-token", max_queue=1)
    try:
        for i in range(50):  # fifty subscriptions hold fifty pending pushes
            await stalled.send({"id": 100 + i, "type": "store.subscribe", "query": "all-metrics"})
        seen_queued = seen_coalesced = 0.0
        closes = 0.0
        for batch in range(80):
            operations = [
                {"op": "insert", "bucket": "metrics", "data": {"name": "m", "value": i, "timestamp": i}}
                for i in range(batch * 100, (batch + 1) * 100)
            ]
            await admin.ok("store.transaction", operations=operations)
            text = await scrape_now(server.port)
            seen_queued = max(seen_queued, value(text, "dashboard_outbox_bytes"))
            seen_coalesced = value(text, "dashboard_coalesced_pushes_total")
            closes = value(text, "dashboard_slow_consumer_closes_total")
            if closes:
                break
        assert seen_queued > 0 and seen_coalesced > 0 and closes == 1, (seen_queued, seen_coalesced, closes)
        assert seen_queued <= limit + 2 * 1024 * 1024  # one round's pushes past the limit at most
        text = await scrape_now(server.port)
        assert value(text, "dashboard_outbox_bytes") == 0
        assert value(text, "dashboard_connections", state="authenticated") == 1  # the admin
        assert value(text, "dashboard_subscriptions") == 0
    finally:
        await admin.close()
        await stalled.close()


async def test_layer_probe_failures(tmp_path, template_database, stop_after):  # noqa: F811
    from tests.servers import make_redis_server

    redis = make_redis_server(tmp_path)
    redis.start()
    stop_after(redis)
    server = live_server(
        tmp_path / "server",
        template_database,
        REDIS_URL=redis.url,
        DASHBOARD_REDIS_LAYER="pubsub",
        DASHBOARD_LAYER_PROBE_SECONDS="0.3",
        DASHBOARD_HEARTBEAT_SECONDS="3600",
    )
    stop_after(server)
    client = await open_client(server.ws, "viewer", "viewer-token")  # starts the hub and its probes
    try:
        await asyncio.sleep(1.0)  # a few probes come back
        text = await scrape_now(server.port)
        assert (value(text, "dashboard_layer_healthy"), value(text, "dashboard_layer_probe_failures_total")) == (1, 0)
        redis.shutdown()
        deadline = time.monotonic() + 10
        while True:
            text = await scrape_now(server.port)
            if value(text, "dashboard_layer_probe_failures_total") >= 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert value(text, "dashboard_layer_probe_failures_total") >= 2
        assert value(text, "dashboard_layer_healthy") == 0
        status, _, body = await asyncio.to_thread(get, server.port, "/readyz")
        assert (status, json.loads(body)["checks"]["redis"]) == (503, "unreachable")
    finally:
        await client.close()
