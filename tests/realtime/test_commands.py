"""The management commands: collect_host_metrics and watch_query against a
real server process, prune_metrics as a service and end to end, and the
pieces they are made of (duration parsing, reading /proc)."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from dashboard_client.collector import HostSampler, as_operations, host_label
from dashboard_client.durations import format_duration, parse_duration
from metrics import retention, services
from metrics.changes import records_changed
from metrics.schema import BUCKETS
from tests.servers import live_server, redis_url_if_reachable

TIMEOUT = 10.0
HOST_METRICS = {
    "host.cpu": "%",
    "host.load1": "",
    "host.memory.used": "MB",
    "host.disk.used": "%",
    "host.net.rx": "B/s",
    "host.net.tx": "B/s",
}
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, template_database):
    process = live_server(tmp_path_factory.mktemp("commands"), template_database)
    yield process
    process.stop()


@pytest.fixture
async def processes():
    """Commands started in the background; killed if a test leaves one running."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_line(proc: asyncio.subprocess.Process) -> str:
    line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    assert line, f"command ended early: {(await proc.stderr.read()).decode()}"
    return line.decode().rstrip("\n")


async def finish(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    return out.decode(), err.decode()


# --- collect_host_metrics -----------------------------------------------------------------


async def test_collect_host_metrics_once_inserts_one_transaction(server, open_dashboard_client):
    viewer = await open_dashboard_client(server.url, "viewer-token")
    admin = await open_dashboard_client(server.url)
    await admin.clear("metrics")
    counts: list[int] = []
    await viewer.subscribe("metric-count", None, counts.append)
    started_ms = time.time() * 1000

    code, out, err = await server.manage_async(
        "collect_host_metrics", "--url", server.url, "--token", "admin-token", "--once", "--interval", "200ms"
    )
    assert code == 0, err

    stored = await admin.all("metrics")
    assert {m["name"]: m["unit"] for m in stored} == HOST_METRICS  # Linux: every source is there
    assert len(stored) == len(HOST_METRICS)
    assert len({m["timestamp"] for m in stored}) == 1
    assert started_ms <= stored[0]["timestamp"] <= time.time() * 1000
    for m in stored:
        assert isinstance(m["value"], (int, float)) and math.isfinite(m["value"]) and m["value"] >= 0, m
    by_name = {m["name"]: m["value"] for m in stored}
    assert by_name["host.cpu"] <= 100 and by_name["host.disk.used"] <= 100
    assert by_name["host.memory.used"] > 0
    # What it printed is what it stored.
    printed = {line.split(" ")[0]: (float(line.split(" ")[1]), line.split(" ")[2:]) for line in out.splitlines()}
    assert printed == {m["name"]: (m["value"], [m["unit"]] if m["unit"] else []) for m in stored}
    # One transaction: one change, so the count went from 0 to 6 in one push.
    await viewer.subscriptions[0].wait_for(lambda n: n == len(HOST_METRICS), TIMEOUT)
    await admin.whoami()  # a round trip after the push, for any straggler to arrive
    assert counts == [0, len(HOST_METRICS)]


async def test_collect_host_metrics_stops_cleanly_on_ctrl_c(server, open_dashboard_client, processes):
    admin = await open_dashboard_client(server.url)
    sub = await admin.subscribe("metrics-by-name", {"name": "host.cpu"})
    before = len(sub.data)
    proc = await server.spawn(
        "collect_host_metrics", "--url", server.url, "--token", "admin-token", "--interval", "100ms"
    )
    processes.append(proc)
    assert (await read_line(proc)).startswith("collecting host metrics every 0.1 s into ")
    await sub.wait_for(lambda data: len(data) >= before + 2, TIMEOUT)
    proc.send_signal(signal.SIGINT)
    out, err = await finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert out.startswith("stopped after ") and out.endswith(" sample(s)\n")


async def test_collect_host_metrics_refuses_a_viewer(server):
    code, _out, err = await server.manage_async(
        "collect_host_metrics", "--url", server.url, "--token", "viewer-token", "--once", "--interval", "100ms"
    )
    assert code == 1
    assert "FORBIDDEN: No permission for store.transaction on *" in err


def fake_proc(root: Path, *, cpu: tuple[int, ...], mem: tuple[int, int], net: tuple[int, int]) -> None:
    (root / "net").mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu  " + " ".join(map(str, cpu)) + "\ncpu0 1 2 3 4\n")
    (root / "meminfo").write_text(f"MemTotal:       {mem[0]} kB\nMemFree:  1 kB\nMemAvailable:   {mem[1]} kB\n")
    (root / "net" / "dev").write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        f"    lo: 999999 10 0 0 0 0 0 0 999999 10 0 0 0 0 0 0\n"
        f"  eth0: {net[0]} 10 0 0 0 0 0 0 {net[1]} 10 0 0 0 0 0 0\n"
    )


def test_host_sampler_reads_proc_and_computes_rates(tmp_path):
    clock = iter([100.0, 102.0])
    # user nice system idle iowait irq softirq steal
    fake_proc(tmp_path, cpu=(100, 0, 100, 700, 100, 0, 0, 0), mem=(8_000_000, 6_000_000), net=(1000, 500))
    sampler = HostSampler(label=host_label("web 1.example"), proc=tmp_path, clock=lambda: next(clock))
    sampler.prime()
    fake_proc(tmp_path, cpu=(130, 0, 120, 740, 110, 0, 0, 0), mem=(8_000_000, 6_000_000), net=(5000, 1500))
    metrics = sampler.sample(1_700_000_000_000)
    values = {m["name"]: (m["value"], m["unit"]) for m in metrics}
    assert values["host.web-1-example.cpu"] == (50.0, "%")  # busy 50 of 100 jiffies
    assert values["host.web-1-example.memory.used"] == (2048.0, "MB")  # 2,000,000 KiB
    assert values["host.web-1-example.net.rx"] == (2000, "B/s")  # loopback left out
    assert values["host.web-1-example.net.tx"] == (500, "B/s")
    assert {m["timestamp"] for m in metrics} == {1_700_000_000_000}
    assert as_operations(metrics[:1]) == [{"op": "insert", "bucket": "metrics", "data": metrics[0]}]


def test_durations():
    assert [parse_duration(t) for t in ("30s", "15m", "1h", "7d", "500ms", "1.5h", "2w")] == [
        30,
        900,
        3600,
        604800,
        0.5,
        5400,
        1209600,
    ]
    for bad in ("7", "d", "-1s", "1y", "", "1 s s"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)
    assert [format_duration(s) for s in (604800, 90, 0.5, 3600)] == ["7d", "90s", "500ms", "1h"]


# --- watch_query ------------------------------------------------------------------------


async def test_watch_query_prints_each_push(server, open_dashboard_client, processes):
    admin = await open_dashboard_client(server.url)
    proc = await server.spawn(
        "watch_query",
        "metrics-by-name",
        "--params",
        '{"name": "watched"}',
        "--url",
        server.url,
        "--token",
        "viewer-token",
        "--count",
        "2",
    )
    processes.append(proc)
    when, kind, subscription_id, data = (await read_line(proc)).split(" ", 3)
    assert (kind, json.loads(data)) == ("initial", [])
    assert when.endswith("Z") and subscription_id.startswith("sub-")

    first = await admin.insert("metrics", {"name": "watched", "value": 1, "timestamp": 1})
    line = await read_line(proc)
    assert line.split(" ", 3)[1:] == ["push", subscription_id, json.dumps([first])]
    second = await admin.insert("metrics", {"name": "watched", "value": 2, "timestamp": 2})
    out, err = await finish(proc)  # --count 2: exits after the second push
    assert proc.returncode == 0, err
    assert out.split(" ", 3)[1:] == ["push", subscription_id, json.dumps([first, second]) + "\n"]


async def test_watch_query_reports_a_refused_subscription(server):
    code, _out, err = await server.manage_async(
        "watch_query", "no-such-query", "--url", server.url, "--token", "viewer-token"
    )
    assert code == 1 and 'QUERY_NOT_DEFINED: Query "no-such-query" is not defined' in err


# --- prune_metrics ------------------------------------------------------------------------

NOW = 1_800_000_000_000
METRICS = BUCKETS["metrics"]


@pytest.fixture
def published():
    sent: list[dict] = []

    def receiver(sender, changes, **kwargs):
        sent.append(changes)

    records_changed.connect(receiver, dispatch_uid="test-commands-receiver")
    yield sent
    records_changed.disconnect(dispatch_uid="test-commands-receiver")


def insert_ages(rows: list[tuple[str, float]]) -> list[str]:
    """Inserts (name, age in days) metrics; returns their keys, in order."""
    return [
        services.record_insert(bucket=METRICS, data={"name": name, "value": 1, "timestamp": NOW - age * DAY_MS})["id"]
        for name, age in rows
    ]


def remaining() -> list[str]:
    return list(METRICS.model.objects.order_by("seq").values_list("key", flat=True))


@pytest.mark.django_db(transaction=True)
def test_prune_deletes_older_rows_and_publishes_one_change(published):
    keys = insert_ages([("cpu", 10), ("cpu", 8), ("cpu", 1), ("mem", 9), ("mem", 7.5), ("disk", 0)])
    published.clear()
    deleted = retention.prune_raw(older_than_ms=7 * DAY_MS, keep_per_name=None, now_ms=NOW)
    assert deleted == 4
    assert remaining() == [keys[2], keys[5]]
    assert published == [{"metrics": None}]


@pytest.mark.django_db(transaction=True)
def test_prune_keeps_newest_per_name_by_timestamp_whatever_their_age(published):
    # Inserted out of timestamp order: "newest" is by timestamp, not insertion.
    keys = insert_ages([("cpu", 8), ("cpu", 10), ("cpu", 9), ("cpu", 1), ("mem", 30), ("mem", 20), ("disk", 100)])
    published.clear()
    deleted = retention.prune_raw(older_than_ms=7 * DAY_MS, keep_per_name=2, now_ms=NOW)
    # cpu keeps 1 day (recent anyway) and 8 days (second newest); mem keeps
    # both; disk keeps its only one.
    assert deleted == 2
    assert remaining() == [keys[0], keys[3], keys[4], keys[5], keys[6]]
    assert published == [{"metrics": None}]


@pytest.mark.django_db(transaction=True)
def test_prune_with_nothing_to_delete_publishes_nothing(published):
    insert_ages([("cpu", 1)])
    published.clear()
    assert retention.prune_raw(older_than_ms=7 * DAY_MS, keep_per_name=1, now_ms=NOW) == 0
    assert published == []


@pytest.mark.django_db(transaction=True)
def test_prune_inside_a_rolled_back_transaction_deletes_and_publishes_nothing(published):
    insert_ages([("cpu", 10)])
    published.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        assert retention.prune_raw(older_than_ms=DAY_MS, keep_per_name=None, now_ms=NOW) == 1
        raise RuntimeError("roll back")
    assert len(remaining()) == 1 and published == []


@pytest.fixture
def redis_server(tmp_path, template_database):
    """A server on the Redis channel layer, which a command run in another
    process shares; skipped without a reachable Redis."""
    url = redis_url_if_reachable()
    if url is None:
        pytest.skip("no Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/15)")
    process = live_server(tmp_path, template_database, REDIS_URL=url, DASHBOARD_REDIS_LAYER="pubsub")
    yield process
    process.stop()


async def test_prune_metrics_command_pushes_once(redis_server, open_dashboard_client):
    admin = await open_dashboard_client(redis_server.url)
    now = int(time.time() * 1000)
    rows = [("cpu", 9), ("cpu", 8), ("cpu", 0), ("mem", 30), ("mem", 10)]
    records = await admin.transaction(
        [
            {"op": "insert", "bucket": "metrics", "data": {"name": n, "value": 1, "timestamp": now - age * DAY_MS}}
            for n, age in rows
        ]
    )
    viewer = await open_dashboard_client(redis_server.url, "viewer-token")
    counts: list[int] = []
    cpu: list[Any] = []
    await viewer.subscribe("metric-count", None, counts.append)
    cpu_sub = await viewer.subscribe("metrics-by-name", {"name": "cpu"}, cpu.append)

    code, out, err = await redis_server.manage_async("prune_metrics", "--older-than", "7d", "--keep-per-name", "1")
    assert code == 0, err
    assert out == (
        "deleted 3 metric(s) older than 7d, keeping the newest 1 per name\n"
        "tier buckets deleted: 10s: 4 older than 7d, 1m: 0 older than 90d, 10m: 0 older than 365d, "
        "1h: kept for ever, 1d: kept for ever\n"
    )

    await cpu_sub.wait_for(lambda data: len(data) == 1, TIMEOUT)
    await viewer.subscriptions[0].wait_for(lambda n: n == 2, TIMEOUT)
    await viewer.whoami()  # a round trip, for any straggling push to arrive
    assert counts == [5, 2]
    assert cpu == [records[:3], [records[2]]]
    assert await admin.all("metrics") == [records[2], records[4]]
