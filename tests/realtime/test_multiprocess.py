"""Several real server processes behind one database and one Redis layer.

Two uvicorn processes (A and B) serve the same PostgreSQL database; changes
cross between them through the Redis pub/sub channel layer. Every write path
(the protocol on another process, a transaction, the Django admin, a
management shell), a crash and restart of a process, and an outage of Redis
must end with every viewer holding the query's committed result, pushed once.
Fixtures: tests/servers.py.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidHandshake

from tests.servers import (
    LAYER_PROBE_SECONDS,
    PROJECT_DIR,
    START_TIMEOUT,
    TIMEOUT,
    Client,
    Cluster,
    make_redis_server,
    manage,
    open_client,
    push_frame,
)

# Loads the fixtures and the hook that attaches server logs to failures.
pytest_plugins = ["tests.servers"]

pytestmark = pytest.mark.multiprocess

RECORD_FIELDS = {"id", "name", "value", "unit", "timestamp", "_version", "_createdAt", "_updatedAt"}


def metric(name: str = "cpu", value: float = 72.5, unit: str = "%", timestamp: int = 1706745600000) -> dict:
    return {"name": name, "value": value, "unit": unit, "timestamp": timestamp}


def stored(record: dict, data: dict) -> None:
    """`record` is what the store returns for an insert of `data`."""
    assert set(record) == RECORD_FIELDS, record
    assert {k: record[k] for k in data} == data, record
    assert record["_version"] == 1 and record["_createdAt"] == record["_updatedAt"], record


def db_record(database, key_or_name: str, by: str = "key") -> dict:
    """A metric as the protocol shows it, read straight from PostgreSQL."""
    assert by in ("key", "name")
    [row] = database.query(
        f"SELECT key, name, value, unit, timestamp, version, created_at, updated_at "
        f"FROM metrics_metric WHERE {by} = %s",
        (key_or_name,),
    )
    key, name, value, unit, timestamp, version, created_at, updated_at = row
    return {
        "id": key,
        "name": name,
        "value": value,
        "unit": unit,
        "timestamp": timestamp,
        "_version": version,
        "_createdAt": created_at,
        "_updatedAt": updated_at,
    }


def db_count(database) -> int:
    [(count,)] = database.query("SELECT count(*) FROM metrics_metric")
    return count


@pytest.fixture(autouse=True)
def empty_store(database):
    """Each test starts with empty buckets and nothing derived from them (no
    subscriptions are live between tests, and record identities are never
    reused, so the servers' caches hold nothing stale)."""
    database.execute(
        "TRUNCATE metrics_metric, metrics_alert, metrics_metricnamestats, metrics_metricrollup, metrics_metrichorizon, "
        "alerting_alertstatus, alerting_alerttransition"
    )


@pytest.fixture
def servers(cluster):
    """The module's two processes, both serving (a failed restart test may
    have left one down)."""
    cluster.ensure_running()
    return cluster


# --- 1. a write on A reaches a viewer on B ---------------------------------------------


async def test_insert_on_a_pushes_once_per_subscription_on_b(servers, ws_connect):
    admin = await ws_connect(servers.a, "admin-token")
    viewer = await ws_connect(servers.b, "viewer-token")
    count_sub, count0 = await viewer.subscribe("metric-count")
    all_sub, all0 = await viewer.subscribe("all-metrics")
    cpu_sub, cpu0 = await viewer.subscribe("metrics-by-name", {"name": "cpu"})
    assert (count0, all0, cpu0) == (0, [], [])

    cpu = await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 72.5, "%"))
    stored(cpu, metric("cpu", 72.5, "%"))
    assert await viewer.pushes_by_subscription(3) == {
        count_sub: push_frame(count_sub, 1),
        all_sub: push_frame(all_sub, [cpu]),
        cpu_sub: push_frame(cpu_sub, [cpu]),
    }
    assert await viewer.silent(), viewer.pushes

    # A memory metric changes the count and the list, not the cpu query.
    memory = await admin.ok("store.insert", bucket="metrics", data=metric("memory", 2048, "MB"))
    stored(memory, metric("memory", 2048, "MB"))
    assert await viewer.pushes_by_subscription(2) == {
        count_sub: push_frame(count_sub, 2),
        all_sub: push_frame(all_sub, [cpu, memory]),
    }
    assert await viewer.silent(), f"the cpu subscription got a push: {viewer.pushes}"


# --- 2. no duplicates across processes --------------------------------------------------


async def test_count_pushes_never_repeat_on_either_process(servers, ws_connect):
    admin = await ws_connect(servers.a, "admin-token")
    viewers = [
        await ws_connect(server, "viewer-token", name=f"viewer{i}@{server.name}")
        for server in (servers.a, servers.b)
        for i in range(2)
    ]
    subs = {}
    for viewer in viewers:
        subs[viewer], initial = await viewer.subscribe("metric-count")
        assert initial == 0

    for i in range(20):
        await admin.ok("store.insert", bucket="metrics", data=metric("cpu", i, "%", 1706745600000 + i))

    for viewer in viewers:
        values = []
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while not values or values[-1] != 20:
            remaining = deadline - asyncio.get_running_loop().time()
            assert remaining > 0, f"{viewer.name} did not reach 20: {values}"
            frame = await viewer.push(remaining)
            assert frame == push_frame(subs[viewer], frame.get("data")), frame
            assert isinstance(frame["data"], int), frame
            assert not values or frame["data"] > values[-1], f"{viewer.name}: {values} then {frame['data']}"
            values.append(frame["data"])
        assert values[0] >= 1 and values[-1] == 20
    for viewer in viewers:
        assert await viewer.silent(0.3), f"{viewer.name} got more after 20: {viewer.pushes}"


# --- 3. transactions -------------------------------------------------------------------


async def test_transaction_is_one_change_and_a_failed_one_is_none(servers, ws_connect):
    admin = await ws_connect(servers.a, "admin-token")
    viewer_b = await ws_connect(servers.b, "viewer-token")
    viewer_a = await ws_connect(servers.a, "viewer-token")
    count_sub, _ = await viewer_b.subscribe("metric-count")
    all_sub, _ = await viewer_b.subscribe("all-metrics")
    cpu_sub, _ = await viewer_b.subscribe("metrics-by-name", {"name": "cpu"})
    disk_sub, disk0 = await viewer_b.subscribe("metrics-by-name", {"name": "disk"})
    count_sub_a, count0 = await viewer_a.subscribe("metric-count")
    assert (disk0, count0) == ([], 0)

    data = [metric("cpu", 1), metric("memory", 2, "MB"), metric("cpu", 3)]
    # Reads after the inserts keep the transaction open a while: a change
    # announced before the commit would be evaluated on the old state, and
    # the viewers would never get these inserts.
    reads = 300
    result = await admin.ok(
        "store.transaction",
        operations=[
            *({"op": "insert", "bucket": "metrics", "data": d} for d in data),
            *({"op": "count", "bucket": "metrics"} for _ in range(reads)),
        ],
    )
    assert set(result) == {"results"}, result
    assert [r["index"] for r in result["results"]] == list(range(3 + reads)), result
    records = [r["data"] for r in result["results"][:3]]
    assert [r["data"] for r in result["results"][3:]] == [3] * reads
    for record, d in zip(records, data, strict=False):
        stored(record, d)

    pushes = await viewer_b.pushes_by_subscription(3)
    # What was pushed is what any other database connection now reads: the
    # committed state, all three inserts at once.
    assert db_count(servers.database) == 3
    assert pushes == {
        count_sub: push_frame(count_sub, 3),
        all_sub: push_frame(all_sub, records),
        cpu_sub: push_frame(cpu_sub, [records[0], records[2]]),
    }
    assert await viewer_a.push() == push_frame(count_sub_a, 3)
    assert await viewer_b.silent(), f"disk or a second push: {viewer_b.pushes}"
    assert await viewer_a.silent(0.1), viewer_a.pushes

    # All or nothing: the last operation fails, so neither insert is written.
    reply = await admin.request(
        "store.transaction",
        operations=[
            {"op": "insert", "bucket": "metrics", "data": metric("cpu", 4)},
            {"op": "insert", "bucket": "metrics", "data": metric("disk", 5, "GB")},
            {"op": "update", "bucket": "metrics", "key": "no-such-key", "data": {"value": 6}},
        ],
    )
    assert reply == {
        "id": reply["id"],
        "type": "error",
        "code": "NOT_FOUND",
        "message": 'Record with key "no-such-key" not found in bucket "metrics"',
    }
    assert db_count(servers.database) == 3
    assert await admin.ok("store.count", bucket="metrics") == 3
    assert await viewer_b.silent(0.8), f"a failed transaction pushed: {viewer_b.pushes}"
    assert await viewer_a.silent(0.1), f"a failed transaction pushed: {viewer_a.pushes}"

    # The pipeline still works, and nothing stale was waiting behind the silence.
    disk = await admin.ok("store.insert", bucket="metrics", data=metric("disk", 7, "GB"))
    assert await viewer_b.pushes_by_subscription(3) == {
        count_sub: push_frame(count_sub, 4),
        all_sub: push_frame(all_sub, [*records, disk]),
        disk_sub: push_frame(disk_sub, [disk]),
    }
    assert await viewer_a.push() == push_frame(count_sub_a, 4)


# --- 4. the Django admin -----------------------------------------------------------------


class AdminSession:
    """A browser-like HTTP session on the Django admin (urllib, cookie jar)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def get(self, path: str) -> tuple[str, str]:
        with self.opener.open(self.base + path, timeout=TIMEOUT) as response:
            return response.url, response.read().decode()

    def post_form(self, path: str, fields: dict[str, str]) -> tuple[str, str]:
        """GETs the form at `path` for its CSRF token, then POSTs `fields` to it;
        returns the final URL (after redirects) and page."""
        _, page = self.get(path)
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert match, f"no CSRF token in the form at {path}:\n{page[:2000]}"
        assert self.cookie("csrftoken"), "no csrftoken cookie"
        body = urllib.parse.urlencode({"csrfmiddlewaretoken": match.group(1), **fields}).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=TIMEOUT) as response:
            return response.url, response.read().decode()

    def login(self, username: str, password: str) -> None:
        url, page = self.post_form(
            "/admin/login/?next=/admin/", {"username": username, "password": password, "next": "/admin/"}
        )
        assert url == self.base + "/admin/", f"login failed at {url}:\n{page[:2000]}"
        assert self.cookie("sessionid"), "no session cookie after login"

    def save(self, path: str, fields: dict[str, str]) -> None:
        url, page = self.post_form(path, fields)
        errors = re.findall(r'<ul class="errorlist[^"]*"[^>]*>.*?</ul>', page, re.S)
        assert url == self.base + "/admin/metrics/metric/", f"{path} did not save (at {url}): {errors}"


async def test_django_admin_writes_on_a_push_to_viewer_on_b(servers, ws_connect):
    await manage(
        servers.env,
        "createsuperuser",
        "--noinput",
        extra_env={
            "DJANGO_SUPERUSER_USERNAME": "mp-admin",
            "DJANGO_SUPERUSER_PASSWORD": "mp-admin-password-8271",
            "DJANGO_SUPERUSER_EMAIL": "mp-admin@example.com",
        },
    )
    viewer = await ws_connect(servers.b, "viewer-token")
    count_sub, _ = await viewer.subscribe("metric-count")
    all_sub, _ = await viewer.subscribe("all-metrics")
    disk_sub, _ = await viewer.subscribe("metrics-by-name", {"name": "disk"})

    admin = AdminSession(servers.a.http)
    await asyncio.to_thread(admin.login, "mp-admin", "mp-admin-password-8271")

    # Add.
    form = {"name": "disk", "value": "55.5", "unit": "GB", "timestamp": "1706745600000"}
    await asyncio.to_thread(admin.save, "/admin/metrics/metric/add/", {**form, "_save": "Save"})
    added = db_record(servers.database, "disk", by="name")
    assert {k: added[k] for k in ("name", "value", "unit", "timestamp", "_version")} == {
        "name": "disk",
        "value": 55.5,
        "unit": "GB",
        "timestamp": 1706745600000,
        "_version": 1,
    }
    assert await viewer.pushes_by_subscription(3) == {
        count_sub: push_frame(count_sub, 1),
        all_sub: push_frame(all_sub, [added]),
        disk_sub: push_frame(disk_sub, [added]),
    }
    assert await viewer.silent(), viewer.pushes
    [(seq,)] = servers.database.query("SELECT seq FROM metrics_metric WHERE key = %s", (added["id"],))

    # Edit: the count does not change, so only the lists push.
    form["value"] = "60"
    await asyncio.to_thread(admin.save, f"/admin/metrics/metric/{seq}/change/", {**form, "_save": "Save"})
    edited = db_record(servers.database, added["id"])
    assert edited == {**added, "value": 60.0, "_version": 2, "_updatedAt": edited["_updatedAt"]}
    assert await viewer.pushes_by_subscription(2) == {
        all_sub: push_frame(all_sub, [edited]),
        disk_sub: push_frame(disk_sub, [edited]),
    }
    assert await viewer.silent(), f"the count pushed an unchanged result: {viewer.pushes}"

    # Delete.
    await asyncio.to_thread(admin.save, f"/admin/metrics/metric/{seq}/delete/", {"post": "yes"})
    assert db_count(servers.database) == 0
    assert await viewer.pushes_by_subscription(3) == {
        count_sub: push_frame(count_sub, 0),
        all_sub: push_frame(all_sub, []),
        disk_sub: push_frame(disk_sub, []),
    }
    assert await viewer.silent(), viewer.pushes


# --- 5. a management process -----------------------------------------------------------


async def test_write_from_a_shell_process_pushes_to_both_servers(servers, ws_connect):
    viewers = [await ws_connect(server, "viewer-token") for server in (servers.a, servers.b)]
    subs = []
    for viewer in viewers:
        shell_sub, shell0 = await viewer.subscribe("metrics-by-name", {"name": "shell"})
        count_sub, count0 = await viewer.subscribe("metric-count")
        assert (shell0, count0) == ([], 0)
        subs.append((shell_sub, count_sub))

    await manage(
        servers.env,
        "shell",
        "-c",
        "from metrics.models import Metric; Metric.objects.create(name='shell', value=1, timestamp=1)",
    )
    record = db_record(servers.database, "shell", by="name")
    assert {k: record[k] for k in ("name", "value", "unit", "timestamp", "_version")} == {
        "name": "shell",
        "value": 1,
        "unit": "",
        "timestamp": 1,
        "_version": 1,
    }
    for viewer, (shell_sub, count_sub) in zip(viewers, subs, strict=False):
        assert await viewer.pushes_by_subscription(2) == {
            shell_sub: push_frame(shell_sub, [record]),
            count_sub: push_frame(count_sub, 1),
        }, viewer.name
    for viewer in viewers:
        assert await viewer.silent(0.4), viewer.pushes


# --- 6. a crashed process restarts without losing anything -------------------------------


async def reconnect(url: str, name: str, timeout: float = START_TIMEOUT) -> tuple[Client, int]:
    """Connects with exponential backoff until `timeout`; returns the client
    and the number of attempts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay, attempts = 0.05, 0
    while True:
        attempts += 1
        try:
            return await open_client(url, name), attempts
        except (TimeoutError, OSError, InvalidHandshake) as error:
            if loop.time() + delay > deadline:
                raise AssertionError(f"{name}: no connection after {attempts} attempts: {error!r}") from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


async def test_killed_process_restarts_and_its_clients_miss_nothing(servers, ws_connect):
    admin = await ws_connect(servers.a, "admin-token")
    viewer = await ws_connect(servers.b, "viewer-token")
    count_sub, _ = await viewer.subscribe("metric-count")
    all_sub, _ = await viewer.subscribe("all-metrics")
    records = []
    for i in range(2):
        records.append(await admin.ok("store.insert", bucket="metrics", data=metric("cpu", i)))
        assert await viewer.pushes_by_subscription(2) == {
            count_sub: push_frame(count_sub, len(records)),
            all_sub: push_frame(all_sub, records),
        }

    servers.b.kill()
    with pytest.raises(ConnectionClosedError) as dropped:
        await asyncio.wait_for(viewer.ws.recv(), TIMEOUT)
    assert dropped.value.rcvd is None, f"expected an abrupt drop, got a close frame: {dropped.value}"

    # The client retries at once and keeps retrying while B is down.
    reconnecting = asyncio.create_task(reconnect(servers.b.ws, "viewer@B (reconnected)"))
    try:
        for i in range(10):
            records.append(await admin.ok("store.insert", bucket="metrics", data=metric("down", i, "", i)))
        assert not reconnecting.done(), "connected to B while it was down?"
        await asyncio.to_thread(servers.b.start)
        again, attempts = await asyncio.wait_for(reconnecting, START_TIMEOUT + 1)
    finally:
        reconnecting.cancel()
    ws_connect.opened.append(again)
    assert attempts > 1
    await again.login("viewer-token")
    count_sub, count = await again.subscribe("metric-count")
    all_sub, everything = await again.subscribe("all-metrics")
    assert count == 12
    assert everything == records

    records.append(await admin.ok("store.insert", bucket="metrics", data=metric("after", 1)))
    assert await again.pushes_by_subscription(2) == {
        count_sub: push_frame(count_sub, 13),
        all_sub: push_frame(all_sub, records),
    }
    assert await again.silent(0.3), again.pushes


# --- 7. the layer goes away and comes back ------------------------------------------------


@pytest.fixture
def own_redis_cluster(database, tmp_path):
    """Two servers on a redis-server of our own, which the test may stop."""
    redis = make_redis_server(tmp_path)
    redis.start()
    cluster = Cluster(database, redis.url, tmp_path, names=("A2", "B2"))
    cluster.redis = redis
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        redis.stop()


async def test_layer_outage_is_repaired_when_redis_returns(own_redis_cluster, ws_connect):
    servers = own_redis_cluster
    admin = await ws_connect(servers.a, "admin-token")
    viewer_a = await ws_connect(servers.a, "viewer-token")
    viewer_b = await ws_connect(servers.b, "viewer-token")
    sub_a, _ = await viewer_a.subscribe("metric-count")
    sub_b, _ = await viewer_b.subscribe("metric-count")
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 1))
    assert await viewer_a.push() == push_frame(sub_a, 1)
    assert await viewer_b.push() == push_frame(sub_b, 1)

    loop = asyncio.get_running_loop()
    down_since = loop.time()
    servers.redis.shutdown()
    # A write on A2 during the outage commits and reaches A2's own viewers.
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 2))
    assert await viewer_a.push() == push_frame(sub_a, 2)

    # A writer that commits and dies before it could publish: its change
    # message is lost for certain, so only the hubs' repair can bring it to
    # A2 (which ignores its own messages, and has no other way to learn of it).
    shell = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "shell",
        "-c",
        "from metrics.models import Metric; Metric.objects.create(name='lost', value=1, timestamp=1)",
        cwd=PROJECT_DIR,
        env=servers.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = loop.time() + START_TIMEOUT
        while db_count(servers.database) < 3:
            assert loop.time() < deadline, "the shell's write did not commit"
            await asyncio.sleep(0.05)
    finally:
        if shell.returncode is None:
            shell.kill()
        await shell.wait()
    # Down long enough for several layer probes to go unanswered.
    await asyncio.sleep(max(0.0, down_since + 3 * LAYER_PROBE_SECONDS - loop.time()))
    await asyncio.to_thread(servers.redis.start)

    # Both hubs re-evaluate once their probes come back.
    assert await viewer_a.push(timeout=10) == push_frame(sub_a, 3)
    seen = []
    while not seen or seen[-1] != 3:
        frame = await viewer_b.push(timeout=10)
        assert frame == push_frame(sub_b, frame.get("data")) and frame["data"] in (2, 3), frame
        assert not seen or frame["data"] > seen[-1], (seen, frame)
        seen.append(frame["data"])
    assert await viewer_a.silent(0.3), viewer_a.pushes
    assert await viewer_b.silent(0.1), viewer_b.pushes

    # And the layer carries changes again.
    await admin.ok("store.insert", bucket="metrics", data=metric("cpu", 3))
    assert await viewer_a.push() == push_frame(sub_a, 4)
    assert await viewer_b.push() == push_frame(sub_b, 4)
    assert await viewer_b.silent(0.3), viewer_b.pushes

    # channels-redis' traceback, repeated every second while Redis was down,
    # is logged once per minute (dashboard_project/logfilters.py).
    for server in (servers.a, servers.b):
        assert server.log().count("Unexpected exception in receive task") <= 1, server.log()[-4000:]
