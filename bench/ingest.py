"""HTTP ingest: what one request of many readings costs (docs/ingest.md, "What a request costs").

    .venv/bin/python bench/ingest.py                          # SQLite and PostgreSQL, 1,000 readings a request
    .venv/bin/python bench/ingest.py --databases sqlite --readings 500 --requests 20

For each database (a SQLite file in a temp dir; a fresh PostgreSQL database, dropped afterwards),
one uvicorn server (DEBUG off, pinned to core 0 as in the other benchmarks; this process on
core 1) takes --requests requests, one after the other, alternating between InfluxDB line
protocol (`POST /api/v2/write`) and JSON (`POST /api/metrics`), each of --readings readings of
12 host-like names at distinct timestamps. Printed per database and format: the request's wall
time (sent to answered) median and max, readings per second at the median, and the server's
CPU per reading over all requests. Every answer must be 204 (line protocol) or 201 with one
record per reading (JSON), and the bucket must hold every reading at the end: otherwise the
exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import s5  # the same server set-up as S5
import servers
from loadclient import ADMIN_TOKEN

NAMES = [f"host.bench{i}" for i in range(12)]


def line_body(first: int, count: int) -> bytes:
    """`count` readings as line protocol, ms precision: `host,n=benchK value=V T`."""
    base = 1_700_000_000_000 + first
    lines = [f"host,n=bench{i % 12} value={i * 0.5} {base + i}" for i in range(count)]
    return "\n".join(lines).encode()


def json_body(first: int, count: int) -> bytes:
    base = 1_700_000_000_000 + first
    return json.dumps(
        [{"name": NAMES[i % 12], "value": i * 0.5, "unit": "%", "timestamp": base + i} for i in range(count)]
    ).encode()


def post(url: str, body: bytes, content_type: str) -> tuple[float, int, bytes]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": content_type},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = response.read()
        status = response.status
    return time.perf_counter() - started, status, answer


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(kind: str, readings: int, requests: int) -> tuple[list[str], list[str]]:
    """Rows to print and failures, for one database."""
    workdir = Path(tempfile.mkdtemp(prefix=f"dashboard-ingest-{kind}-"))
    database = s5.DATABASES[kind](workdir)
    server: servers.Server | None = None
    failures: list[str] = []
    try:
        database.create()
        # Plain HTTP on loopback, as a scraper or agent beside the server would send it.
        env = {**s5.case_env(database.url), "DJANGO_SECURE_SSL_REDIRECT": "0"}
        servers.prepare_database(env, force=True, python=servers.PYTHON)
        port = servers.free_port()
        server = servers.Server("server", s5.server_argv(port), env, workdir / "server.log", port)
        server.start()
        s5.pin(1)
        walls: dict[str, list[float]] = {"line protocol": [], "JSON": []}
        cpu_before = cpu_seconds(server.pid)
        for index in range(requests):
            first = index * readings
            if index % 2 == 0:
                fmt = "line protocol"
                wall, status, _ = post(
                    f"{server.http}/api/v2/write?precision=ms", line_body(first, readings), "text/plain"
                )
                if status != 204:
                    failures.append(f"{kind} request {index}: status {status}")
            else:
                fmt = "JSON"
                wall, status, answer = post(
                    f"{server.http}/api/metrics", json_body(first, readings), "application/json"
                )
                if status != 201 or len(json.loads(answer)) != readings:
                    failures.append(f"{kind} request {index}: status {status}")
            walls[fmt].append(wall)
        cpu = cpu_seconds(server.pid) - cpu_before
        with database.connect() as conn:
            stored = conn.execute("SELECT COUNT(*) FROM metrics_metric").fetchone()[0]
        if stored != readings * requests:
            failures.append(f"{kind}: {stored} readings stored, {readings * requests} sent")
        rows = []
        for fmt, times in walls.items():
            if times:
                median = statistics.median(times)
                rows.append(
                    f"{kind:10} {fmt:13} {len(times)} requests of {readings:,}: median {median * 1000:.0f} ms, "
                    f"max {max(times) * 1000:.0f} ms, {readings / median:,.0f} readings/s at the median"
                )
        rows.append(f"{kind:10} server CPU per reading over all requests: {cpu * 1000 / (readings * requests):.3f} ms")
        return rows, failures
    finally:
        s5.pin(None)
        if server is not None:
            server.stop()
        database.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--readings", type=int, default=1000, help="readings per request (default 1,000)")
    parser.add_argument("--requests", type=int, default=10, help="requests per database (default 10)")
    options = parser.parse_args(argv)
    failures: list[str] = []
    print(f"HTTP ingest, code {s5.revision()}")
    for kind in s5.database_list(options.databases):
        rows, failed = run(kind, options.readings, options.requests)
        print("\n".join(rows), flush=True)
        failures += failed
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
