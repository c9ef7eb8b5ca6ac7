"""Benchmark S5 (issue 12): a long history in the `metrics` bucket, one open dashboard page, a collector-like writer.

    bench/run_s5.sh                                    # 10k, 1M and 10M readings on SQLite and PostgreSQL
    bench/run_s5.sh --sizes 10000,1000000 --databases sqlite --seconds 30
    bench/run_s5.sh --smoke --databases sqlite         # CI size (tests/bench/test_bench_s5_smoke.py)

For each database (a SQLite file in a temp dir; a fresh PostgreSQL database, dropped afterwards)
and each size, with one uvicorn server process (DEBUG off, the in-memory layer, as bench/run.sh):

  1. Migrate an empty database and seed the demo tokens, then preload `metrics_metric` by SQL
     from this process (SQLite: executemany in large transactions with synchronous=OFF;
     PostgreSQL: COPY, then VACUUM ANALYZE as autovacuum would soon do): 12 host-collector-like
     names, one reading per name per second (--spacing-ms; by default 5 s at 10,000 readings,
     which at 1 s would not fill the page's 1-hour charts: see spacing_for), timestamps ending at
     the load's start, so 10M readings span 9.6 days.  Then `manage.py rebuild_aggregates` (the derived tables from the raw
     readings), then a checkpoint (SQLite's WAL, PostgreSQL's dirty buffers), so that the
     measured phase does not write out the load.  Load, rebuild and checkpoint times are reported.  The server starts pinned to core 0; this
     process pins itself to core 1 from then on.
  2. First results (subscribe sent to reply; median of --repeats, each subscription dropped again)
     of the page's queries: metric-count, metric-stats, active-alerts, latest-metrics {n: 20},
     metric-series {name, points: 500, last: 1 h} for four names, plus metric-series of host.cpu
     over the whole stored range at 500 points.  Then one viewer connection opens the page's
     subscriptions and keeps them.
  3. An admin connection writes like `collect_host_metrics`: 2 store.transactions per second
     (paced), each 6 metric inserts (names cycling over the 12, timestamp = now), for --seconds.
     Per transaction: server CPU (from /proc over the phase), write acknowledgement p50/p99 (sent
     to result) and, per subscription, push p50/p99: from sending a transaction to the first push
     whose result reflects it (recognized by content: the count, the stats' total count, the
     newest record's timestamp, a series' bucket count), coalescing included.  A sliding series
     also pushes on its own timer; such pushes reflect no new write and are counted apart.
     Just before the writes, a fixed CPU loop is timed on each core: the machine's speed
     at that moment (this virtual machine sometimes runs everything about twice as slowly).

Checks (exit status 1 in any mode when one fails): every result has the documented shape and
equals a recomputation from the raw table by this process's own SQL (initial results before the
writes, final results after them); every write is reflected by a push on every subscription it
affects (a write never reflected is a missing push); no push is stale or repeats the previous
result; active-alerts (nothing writes alerts) gets no push; the transaction results are the
records sent.  Figures are printed per database and size, then against issue 12's targets, and
one BENCH_JSON line per case.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servers
from loadclient import (
    ADMIN_TOKEN,
    VIEWER_TOKEN,
    Conn,
    PhaseMeter,
    RequestFailed,
    RunResult,
    Subscription,
    Viewer,
    await_final,
    brief,
    busy_processes,
    default_origin,
    linger,
    ms,
    percentile,
    process_tree,
    result_data,
    settle,
    spec_label,
)
from soak import BackendMeter

JSON = Any
QuerySpec = tuple[str, dict[str, JSON] | None]

# Like realtime/collector.py's names, with the units the brief of issue 12's S5 gives them.
METRIC_NAMES: tuple[tuple[str, str], ...] = (
    ("host.cpu", "%"),
    ("host.load1", ""),
    ("host.mem.used", "B"),
    ("host.mem.available", "B"),
    ("host.disk.read", "B/s"),
    ("host.disk.write", "B/s"),
    ("host.net.rx", "B/s"),
    ("host.net.tx", "B/s"),
    ("host.swap.used", "B"),
    ("host.procs", ""),
    ("host.temp", "C"),
    ("host.uptime", "s"),
)
NAMES = tuple(name for name, _ in METRIC_NAMES)
UNITS = dict(METRIC_NAMES)
# (base, spread) of each name's values, in the order above; host.uptime counts seconds instead.
VALUE_RANGES = (
    (5.0, 90.0),
    (0.1, 3.5),
    (6e9, 2e9),
    (8e9, 6e9),
    (0.0, 5e7),
    (0.0, 3e7),
    (0.0, 1.2e7),
    (0.0, 4e6),
    (0.0, 5e8),
    (250.0, 120.0),
    (38.0, 40.0),
    None,
)
UPTIME_BASE_S = 1_000_000.0
NOISE_PERIOD = 1009  # values repeat per name after this many seconds (a prime: no beat with 12)
CHART_NAMES = ("host.cpu", "host.mem.used", "host.disk.read", "host.net.rx")
WHOLE_RANGE_NAME = "host.cpu"
SERIES_POINTS = 500
SERIES_LAST_MS = 3_600_000
LATEST_N = 20
TX_PER_S = 2.0
INSERTS_PER_TX = 6
LOAD_BATCH = 200_000
SERVER_START_TIMEOUT_S = 300.0
REBUILD_TIMEOUT_S = 6 * 3600.0
CHECK_REL_TOL = 1e-9

DEFAULT_SIZES = (10_000, 1_000_000, 10_000_000)
SMOKE_SIZE = 10_000
SMOKE_SECONDS = 5.0

# Issue 12's targets (S5, at 10,000,000 readings).
TARGET_SIZE = 10_000_000
TARGET_CPU_RATIO = 1.3
TARGET_PUSH_P99_MS = 50.0
TARGET_ACK_P99_MS = 20.0
TARGET_FIRST_RESULT_MS = 50.0

METRIC_COUNT: QuerySpec = ("metric-count", None)
METRIC_STATS: QuerySpec = ("metric-stats", None)
ACTIVE_ALERTS: QuerySpec = ("active-alerts", None)
LATEST: QuerySpec = ("latest-metrics", {"n": LATEST_N})


def chart_spec(name: str) -> QuerySpec:
    return ("metric-series", {"name": name, "points": SERIES_POINTS, "last": SERIES_LAST_MS})


PAGE_SPECS: tuple[QuerySpec, ...] = (
    METRIC_COUNT,
    METRIC_STATS,
    ACTIVE_ALERTS,
    LATEST,
    *(chart_spec(name) for name in CHART_NAMES),
)
WHOLE_RANGE_LABEL = f"metric-series whole range ({WHOLE_RANGE_NAME}, {SERIES_POINTS} points)"


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- readings


def _value_tables() -> list[list[float]]:
    """Per name, NOISE_PERIOD plausible values (a cheap deterministic pseudo-random walk around a base)."""
    tables = []
    for index, spread in enumerate(VALUE_RANGES):
        if spread is None:
            tables.append([])
            continue
        base, width = spread
        state = 12345 + 7919 * index
        values = []
        for _ in range(NOISE_PERIOD):
            state = (state * 1103515245 + 12345) % 2**31
            value = base + width * state / 2**31
            values.append(float(round(value)) if width > 1000 or index == 9 else round(value, 2))
        tables.append(values)
    return tables


VALUE_TABLES = _value_tables()


def reading_value(index: int, second: int) -> float:
    """The value of name NAMES[index] at second `second` of the preload's grid (and after it)."""
    if VALUE_RANGES[index] is None:
        return UPTIME_BASE_S + second
    return VALUE_TABLES[index][second % NOISE_PERIOD]


@dataclass(frozen=True)
class Grid:
    """The preloaded readings: reading i (seq i + 1) is of name i % 12 at step i // 12, steps
    `spacing_ms` apart (1 s by default), the last one at `end_ms`; keys p000000001, ...
    Everything about them (count in a range, timestamps) follows from these numbers."""

    size: int
    end_ms: int
    spacing_ms: int | None = None  # None: spacing_for(size)

    @property
    def seconds(self) -> int:
        return -(-self.size // len(NAMES))

    @property
    def base_ms(self) -> int:
        return self.end_ms - (self.seconds - 1) * self.spacing_ms

    @property
    def oldest_ms(self) -> int:
        return self.base_ms

    def rows(self, first: int, stop: int) -> Iterator[tuple[int, str, int, int, int, str, float, str, float]]:
        """(seq, key, version, created_at, updated_at, name, value, unit, timestamp) of readings first..stop-1."""
        base = self.base_ms
        names = NAMES
        units = [UNITS[name] for name in names]
        for i in range(first, stop):
            second, index = divmod(i, len(names))
            ts = base + second * self.spacing_ms
            seq = i + 1
            yield (seq, f"p{seq:09d}", 1, ts, ts, names[index], reading_value(index, second), units[index], float(ts))

    def count(self, name: str, start_ms: float, stop_ms: float) -> int:
        """Preloaded readings of `name` with start_ms <= timestamp < stop_ms."""
        index = NAMES.index(name)
        per_name = -(-(self.size - index) // len(NAMES))  # seconds at which this name has a reading
        first = max(0, math.ceil((start_ms - self.base_ms) / self.spacing_ms))
        last = min(per_name - 1, math.ceil((stop_ms - self.base_ms) / self.spacing_ms) - 1)
        return max(0, last - first + 1)


# --------------------------------------------------------------------------- databases


class SqliteDatabase:
    """A SQLite file in the case's temp dir (WAL, as the server opens it)."""

    kind = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "db.sqlite3"
        self.url = f"sqlite:///{self.path}"

    def create(self) -> None:
        pass

    def drop(self) -> None:
        pass  # the temp dir goes with the case

    def load(self, grid: Grid) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the unique index on key stays in memory
            insert = (
                "INSERT INTO metrics_metric (seq, key, version, created_at, updated_at, name, value, unit, "
                "timestamp) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            )
            for first in range(0, grid.size, LOAD_BATCH):
                conn.execute("BEGIN")
                conn.executemany(insert, grid.rows(first, min(first + LOAD_BATCH, grid.size)))
                conn.execute("COMMIT")
        finally:
            conn.close()
        self.checkpoint()

    def checkpoint(self) -> None:
        """The WAL written so far into the database file: the server's first commits would do it."""
        conn = sqlite3.connect(self.path)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def connect(self) -> Any:
        return sqlite3.connect(self.path)

    def sql(self, text: str) -> str:
        return text

    def backend_pids(self) -> list[int]:
        return []


class PostgresDatabase:
    """A fresh database on the PostgreSQL server of servers.POSTGRES_URL."""

    kind = "postgres"

    def __init__(self, workdir: Path) -> None:
        self.name = f"bench_s5_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = servers.database_url(self.name)
        self._created = False

    def create(self) -> None:
        servers.create_database(servers.POSTGRES_URL, self.name)
        self._created = True

    def drop(self) -> None:
        if self._created:
            servers.drop_database(servers.POSTGRES_URL, self.name)
            self._created = False

    def load(self, grid: Grid) -> None:
        with servers.postgres_connect(self.url) as conn:
            with conn.transaction(), conn.cursor() as cursor:
                with cursor.copy(
                    "COPY metrics_metric (seq, key, version, created_at, updated_at, name, value, "
                    "unit, timestamp) FROM STDIN"
                ) as copy:
                    for first in range(0, grid.size, LOAD_BATCH):
                        # Text format, built here: much faster than a write_row() per reading.
                        copy.write(
                            "".join(
                                f"{seq}\t{key}\t1\t{created}\t{updated}\t{name}\t{value!r}\t{unit}\t{ts!r}\n"
                                for seq, key, _, created, updated, name, value, unit, ts in grid.rows(
                                    first, min(first + LOAD_BATCH, grid.size)
                                )
                            )
                        )
                cursor.execute("SELECT setval(pg_get_serial_sequence('metrics_metric', 'seq'), %s)", (grid.size,))
            conn.execute("VACUUM ANALYZE metrics_metric")

    def checkpoint(self) -> None:
        """The buffers the load dirtied written out now (a checkpoint spread over the measured
        phase made commits wait 200 ms and more at 10M readings)."""
        with servers.postgres_connect(self.url) as conn:
            conn.execute("CHECKPOINT")

    def connect(self) -> Any:
        return servers.postgres_connect(self.url)

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def backend_pids(self) -> list[int]:
        with servers.postgres_connect(servers.POSTGRES_URL) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)).fetchall()
        return [int(pid) for (pid,) in rows]


DATABASES = {"sqlite": SqliteDatabase, "postgres": PostgresDatabase}


# --------------------------------------------------------------------------- ground truth


class Truth:
    """The queries' answers recomputed from the raw table with this process's own SQL."""

    def __init__(self, database: SqliteDatabase | PostgresDatabase) -> None:
        self.database = database

    def _rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self.database.connect()
        try:
            return list(conn.execute(self.database.sql(text), tuple(params)).fetchall())
        finally:
            conn.close()

    def count(self) -> int:
        return int(self._rows("SELECT count(*) FROM metrics_metric")[0][0])

    def stats(self) -> list[dict[str, JSON]]:
        groups = self._rows(
            "SELECT name, count(*), min(value), max(value), sum(value), max(seq) FROM metrics_metric GROUP BY name"
        )
        newest = {
            seq: (value, unit)
            for seq, value, unit in self._rows(
                "SELECT seq, value, unit FROM metrics_metric WHERE seq IN "
                "(SELECT max(seq) FROM metrics_metric GROUP BY name)"
            )
        }
        return sorted(
            (
                {
                    "name": name,
                    "count": count,
                    "min": low,
                    "max": high,
                    "avg": total / count,
                    "last": newest[last][0],
                    "unit": newest[last][1],
                }
                for name, count, low, high, total, last in groups
            ),
            key=lambda row: row["name"],
        )

    def latest_keys(self, n: int) -> list[str]:
        return [
            key for (key,) in reversed(self._rows("SELECT key FROM metrics_metric ORDER BY seq DESC LIMIT ?", (n,)))
        ]

    def series(self, name: str, start: float, stop: float, step: int) -> list[dict[str, JSON]]:
        """Buckets [t, t + step) with t a multiple of step, of the readings start <= timestamp <= stop."""
        buckets: dict[int, list[float]] = {}
        rows = self._rows(
            "SELECT timestamp, value FROM metrics_metric WHERE name = ? AND timestamp >= ? AND timestamp <= ?",
            (name, start, stop),
        )
        for ts, value in rows:
            t = int(ts // step * step)
            bucket = buckets.get(t)
            if bucket is None:
                buckets[t] = [1, value, value, value]
            else:
                bucket[0] += 1
                bucket[1] = min(bucket[1], value)
                bucket[2] = max(bucket[2], value)
                bucket[3] += value
        return [
            {"t": t, "count": c, "min": lo, "max": hi, "avg": total / c}
            for t, (c, lo, hi, total) in sorted(buckets.items())
        ]


def close(a: JSON, b: JSON) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=CHECK_REL_TOL, abs_tol=1e-9)
    return a == b


def compare_rows(where: str, got: JSON, expected: list[dict[str, JSON]], keys: Sequence[str]) -> list[str]:
    """Row lists equal key by key (numbers within CHECK_REL_TOL); the first differences."""
    if not isinstance(got, list):
        return [f"{where}: expected a list, got {brief(got)}"]
    problems = []
    if len(got) != len(expected):
        problems.append(f"{where}: {len(got)} rows, recomputation gives {len(expected)}")
    for index, (row, want) in enumerate(zip(got, expected, strict=False)):
        if not isinstance(row, dict) or set(row) != set(keys):
            problems.append(f"{where}: row {index} is {brief(row)}, expected the keys {list(keys)}")
        elif not all(close(row[key], want[key]) for key in keys):
            problems.append(f"{where}: row {index} is {brief(row)}, recomputation gives {brief(want)}")
        if len(problems) >= 3:
            break
    return problems


STATS_KEYS = ("name", "count", "min", "max", "avg", "last", "unit")
POINT_KEYS = ("t", "count", "min", "max", "avg")
SERIES_KEYS = {"name", "unit", "from", "to", "step", "points"}


def series_shape(where: str, data: JSON, params: dict[str, JSON]) -> list[str]:
    """What the protocol says of any metric-series result, whatever the data."""
    if not isinstance(data, dict) or set(data) != SERIES_KEYS:
        return [f"{where}: result {brief(data)} does not have the keys {sorted(SERIES_KEYS)}"]
    problems = []
    step, points = data["step"], data["points"]
    if data["name"] != params["name"] or data["unit"] != UNITS[params["name"]]:
        problems.append(f"{where}: name/unit {data['name']!r}/{data['unit']!r}")
    if not isinstance(step, int) or isinstance(step, bool) or step <= 0:
        return [*problems, f"{where}: step {step!r} is not a positive integer"]
    if "from" in params and (data["from"] != params["from"] or data["to"] != params["to"]):
        problems.append(f"{where}: from/to {data['from']}/{data['to']}, asked {params['from']}/{params['to']}")
    if "last" in params and not params["last"] <= data["to"] - data["from"] < params["last"] + 2 * step:
        problems.append(f"{where}: from/to {data['from']}/{data['to']} is not a window of {params['last']} ms")
    if not isinstance(points, list) or len(points) > params["points"]:
        return [*problems, f"{where}: points is not a list of at most {params['points']}: {brief(points)}"]
    times = [point.get("t") if isinstance(point, dict) else None for point in points]
    if any(not isinstance(t, (int, float)) or t % step for t in times) or times != sorted(set(times)):
        problems.append(f"{where}: point times are not increasing multiples of the step {step}: {brief(times)}")
    return problems


def check_result(where: str, spec: QuerySpec, data: JSON, truth: Truth) -> list[str]:
    """The result of one query against the recomputation (the store must not change meanwhile)."""
    query, params = spec
    if query == "metric-count":
        expected = truth.count()
        return [] if data == expected else [f"{where}: {brief(data)}, recomputation gives {expected}"]
    if query == "metric-stats":
        return compare_rows(where, data, truth.stats(), STATS_KEYS)
    if query == "latest-metrics":
        keys = truth.latest_keys(params["n"])
        got = (
            [record.get("id") for record in data]
            if isinstance(data, list) and all(isinstance(record, dict) for record in data)
            else data
        )
        return [] if got == keys else [f"{where}: keys {brief(got)}, recomputation gives {brief(keys)}"]
    if query == "active-alerts":
        return [] if data == [] else [f"{where}: {brief(data)}, nothing wrote alerts"]
    if query == "metric-series":
        problems = series_shape(where, data, params)
        if problems:
            return problems
        expected = truth.series(params["name"], data["from"], data["to"], data["step"])
        return compare_rows(where, data["points"], expected, POINT_KEYS)
    return [f"{where}: no check for {query}"]


# --------------------------------------------------------------------------- push attribution


@dataclass
class Write:
    """One store.transaction of the writer: its readings, send time and reply."""

    index: int
    ts: int
    names: tuple[str, ...]
    sent: float
    replied: float | None = None


def reflected_level(
    spec: QuerySpec, data: JSON, writes: Sequence[Write], base: int, grid: Grid, by_ts: dict[int, int]
) -> int | None:
    """The index of the last write this result reflects (-1: none), None if it cannot be told.

    metric-count and metric-stats by the count (each write adds INSERTS_PER_TX), latest-metrics by
    the newest record's timestamp (each write has its own), a series by the count of the bucket
    holding each write: the preload's readings there (from the grid) plus the writes up to it.
    """
    query, params = spec
    if query in ("metric-count", "metric-stats"):
        if query == "metric-count":
            total = data
        elif isinstance(data, list) and all(isinstance(row, dict) for row in data):
            total = sum(row.get("count", 0) for row in data)
        else:
            return None
        if not isinstance(total, int) or (total - base) % INSERTS_PER_TX:
            return None
        return (total - base) // INSERTS_PER_TX - 1
    if query == "latest-metrics":
        if not isinstance(data, list) or not data or not isinstance(data[-1], dict):
            return None
        return by_ts.get(data[-1].get("timestamp"), -1)
    if query == "metric-series":
        if not isinstance(data, dict) or not isinstance(data.get("step"), int) or data["step"] <= 0:
            return None
        name, step = params["name"], data["step"]
        counts = {point.get("t"): point.get("count") for point in data.get("points", []) if isinstance(point, dict)}
        level = -1
        ours: dict[int, int] = {}
        for write in writes:
            mine = write.names.count(name)
            if not mine:
                continue
            t = write.ts // step * step
            ours[t] = ours.get(t, 0) + mine
            if (counts.get(t) or 0) < grid.count(name, t, t + step) + ours[t]:
                break
            level = write.index
        return level
    return -1  # active-alerts: no write reaches it


def affects(spec: QuerySpec, write: Write) -> bool:
    query, params = spec
    if query == "active-alerts":
        return False
    if query == "metric-series":
        return params["name"] in write.names
    return True


@dataclass
class SubFigures:
    latencies: list[float] = field(default_factory=list)
    pushes: int = 0
    own_pushes: int = 0  # pushes that reflected at least one new write
    other_pushes: int = 0  # a sliding series' timer pushes (no new write)
    affecting: int = 0
    missing: int = 0
    failures: list[str] = field(default_factory=list)


def attribute(
    spec: QuerySpec,
    sub: Subscription,
    pushes: Sequence[Any],
    writes: Sequence[Write],
    base: int,
    grid: Grid,
    by_ts: dict[int, int],
) -> SubFigures:
    """Push latencies of one subscription: for each write affecting it, sent -> first push reflecting it."""
    figures = SubFigures(pushes=len(pushes))
    label = spec_label(spec)
    affecting = [write for write in writes if affects(spec, write)]
    figures.affecting = len(affecting)
    sliding = spec[0] == "metric-series"
    previous = reflected_level(spec, sub.initial, writes, base, grid, by_ts)
    if previous is None:
        previous = -1
    previous_data = sub.initial
    pending = iter(affecting)
    waiting = next(pending, None)
    for number, push in enumerate(pushes, 1):
        level = reflected_level(spec, push.data, writes, base, grid, by_ts)
        if push.data == previous_data:
            figures.failures.append(f"{label}: push #{number} repeats the previous result")
        if level is None:
            figures.failures.append(f"{label}: push #{number} cannot be matched to a write: {brief(push.data)}")
            continue
        if level < previous:
            figures.failures.append(f"{label}: push #{number} is stale (reflects write {level} after {previous})")
        elif level == previous:
            if sliding:
                figures.other_pushes += 1
            elif spec[0] != "active-alerts":
                figures.failures.append(f"{label}: push #{number} reflects no new write")
        else:
            figures.own_pushes += 1
        while waiting is not None and waiting.index <= level:
            if push.t >= waiting.sent:
                figures.latencies.append(push.t - waiting.sent)
            waiting = next(pending, None)
        previous, previous_data = max(previous, level), push.data
    if spec[0] == "active-alerts" and pushes:
        figures.failures.append(f"{label}: {len(pushes)} pushes, but nothing wrote alerts")
    while waiting is not None:
        figures.missing += 1
        waiting = next(pending, None)
    if figures.missing:
        figures.failures.append(f"{label}: {figures.missing} of {len(affecting)} writes never reflected by a push")
    return figures


# --------------------------------------------------------------------------- one case


@dataclass
class Options:
    seconds: float
    repeats: int
    timeout: float
    keep: bool
    smoke: bool
    py_spy: str | None = None
    quiet_wait: float = 0.0
    spacing_ms: int = 1000


@dataclass
class Case:
    database: str
    size: int
    spacing_ms: int = 0  # set when the case's readings are made
    figures: dict[str, JSON] = field(default_factory=dict)
    first_results: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds per repeat
    subs: dict[str, SubFigures] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def case_env(url: str) -> dict[str, str]:
    # Production-like, as bench/run.sh: with DEBUG on, Django keeps every SQL query in memory.
    return servers.server_env(
        url,
        None,
        debug=False,
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_LOG_LEVEL=os.environ.get("DJANGO_LOG_LEVEL", "WARNING"),
    )


def spacing_for(size: int, options: Options) -> int:
    """ms between a name's preloaded readings: --spacing-ms, else 1 s (the collector's) or,
    for a size whose readings would not fill the page's 1-hour charts at 1 s, the smallest
    whole second that does. The CPU target compares sizes: at 1 s, 10,000 readings fill 14
    minutes of each chart (84 of its 360 buckets), so its charts, pushed after every write,
    would be a quarter of the size they are at 1,000,000 and 10,000,000 readings (before
    issue 12 the charts showed a name's newest 500 readings, as many at 10,000 as at any size)."""
    if options.spacing_ms is not None:
        return options.spacing_ms
    per_name = max(1, size // len(NAMES))
    seconds = -(-SERIES_LAST_MS // (per_name * 1000))
    return max(1, seconds) * 1000


def pin(core: int | None) -> None:
    """This process on one core (None: on all of them again); nothing on a one-core machine."""
    cores = os.cpu_count() or 1
    if cores >= 2:
        os.sched_setaffinity(0, set(range(cores)) if core is None else {core})


def server_argv(port: int) -> list[str]:
    argv = servers.uvicorn_argv(port, servers.PYTHON)
    return ["taskset", "-c", "0", *argv] if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else argv


def run_case(kind: str, size: int, options: Options) -> Case:
    """Prepare the database, start the server, measure; always stops and cleans up."""
    case = Case(kind, size)
    workdir = Path(tempfile.mkdtemp(prefix=f"dashboard-s5-{kind}-"))
    database = DATABASES[kind](workdir)
    server: servers.Server | None = None
    try:
        database.create()
        env = case_env(database.url)
        servers.prepare_database(env, force=True, python=servers.PYTHON)
        grid = Grid(size, now_ms(), spacing_for(size, options))
        case.spacing_ms = grid.spacing_ms
        started = time.perf_counter()
        database.load(grid)
        case.figures["load_s"] = round(time.perf_counter() - started, 1)
        print(f"  loaded {size:,} readings in {case.figures['load_s']} s", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            servers.manage(env, "rebuild_aggregates", timeout=REBUILD_TIMEOUT_S, python=servers.PYTHON)
            case.figures["rebuild_aggregates_s"] = round(time.perf_counter() - started, 1)
            print(f"  rebuild_aggregates in {case.figures['rebuild_aggregates_s']} s", file=sys.stderr, flush=True)
        except servers.ServerError as error:
            lines = [line for line in str(error).splitlines() if line.strip() and "manage.py help" not in line]
            case.failures.append(f"rebuild_aggregates failed: {lines[-1] if lines else error}")
        started = time.perf_counter()
        database.checkpoint()
        case.figures["checkpoint_s"] = round(time.perf_counter() - started, 1)
        truth = Truth(database)
        port = servers.free_port()
        server = servers.Server(
            "server", server_argv(port), env, workdir / "server.log", port, start_timeout=SERVER_START_TIMEOUT_S
        )
        started = time.perf_counter()
        server.start()
        case.figures["server_start_s"] = round(time.perf_counter() - started, 1)
        pin(1)
        ours = {os.getpid(), *process_tree(server.pid), *database.backend_pids()}
        busy = wait_until_quiet(ours, options.quiet_wait)
        if busy:
            case.notes.append(f"machine not quiet before the run: {'; '.join(busy)}")
        run_loop(measure(case, server, database, grid, truth, options))
    except Exception as error:  # report the case as failed and go on with the next one
        traceback.print_exc()
        case.failures.append(f"aborted: {error!r}"[:2000])
    finally:
        pin(None)
        if server is not None:
            server.stop()
            lines = [
                line for line in server.log().splitlines() if line.strip() and not line.startswith(servers.LOG_HEADER)
            ]
            if lines:
                case.notes.append(f"server log: {len(lines)} lines, last: {' | '.join(lines[-5:])}"[:1500])
        try:
            database.drop()
        except Exception as error:
            print(f"could not drop the database: {error}", file=sys.stderr)
        if options.keep or not case.ok:
            print(f"  kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return case


def wait_until_quiet(ours: set[int], patience_s: float) -> list[str]:
    """Waits up to `patience_s` for a second in which no other process used 5 % of a core (other
    people's test runs share this machine); returns the busy processes of the last second checked."""
    deadline = time.monotonic() + patience_s
    while True:
        busy = busy_processes(ours, share=0.05 if patience_s else 0.02)
        if not busy or time.monotonic() > deadline:
            return busy


def run_loop(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def open_conn(url: str, token: str, label: str) -> Conn:
    conn = await Conn.open(url, default_origin(url), label)
    await conn.call("auth.login", token=token)
    return conn


async def subscribe(conn: Conn, spec: QuerySpec) -> tuple[float, str, JSON]:
    """(seconds from request to reply, subscription id, initial result); RequestFailed on an error frame."""
    query, params = spec
    fields = {"query": query} if params is None else {"query": query, "params": params}
    pending = conn.send("store.subscribe", **fields)
    t_reply, frame = await conn.reply(pending)
    data = result_data(conn.label, pending, frame)
    if not isinstance(data, dict) or not isinstance(data.get("subscriptionId"), str) or "data" not in data:
        raise RequestFailed(f"{conn.label}: malformed subscribe result {brief(data)}")
    return t_reply - pending.t_sent, data["subscriptionId"], data["data"]


def whole_range_spec(grid: Grid) -> QuerySpec:
    return (
        "metric-series",
        {"name": WHOLE_RANGE_NAME, "points": SERIES_POINTS, "from": grid.oldest_ms, "to": now_ms()},
    )


async def first_results(case: Case, conn: Conn, grid: Grid, truth: Truth, repeats: int) -> set[str]:
    """Subscribe, time the reply, unsubscribe; `repeats` rounds over the page's queries and the
    whole-range series (its `to` is now, so every round is a new query). Returns the labels of
    the queries the server refused (one failure each)."""
    refused: set[str] = set()
    firsts: list[tuple[str, QuerySpec, JSON]] = []  # checked after the timings, not between them
    for round_ in range(repeats):
        for spec in (*PAGE_SPECS, None):
            label = WHOLE_RANGE_LABEL if spec is None else spec_label(spec)
            if label in refused:
                continue
            spec = whole_range_spec(grid) if spec is None else spec
            try:
                seconds, sub_id, data = await subscribe(conn, spec)
            except RequestFailed as error:
                refused.add(label)
                case.failures.append(f"subscribe {label}: {error}"[:500])
                continue
            await conn.call("store.unsubscribe", subscriptionId=sub_id)
            case.first_results.setdefault(label, []).append(seconds)
            if round_ == 0:
                firsts.append((label, spec, data))
    for label, spec, data in firsts:
        case.failures.extend(check_result(f"first result of {label}", spec, data, truth))
    return refused


def transaction(index: int, ts: int, grid: Grid) -> tuple[list[dict[str, JSON]], tuple[str, ...]]:
    """The writer's index-th transaction: INSERTS_PER_TX readings, names cycling over the 12."""
    second = (ts - grid.base_ms) // grid.spacing_ms
    picks = [(index * INSERTS_PER_TX + j) % len(NAMES) for j in range(INSERTS_PER_TX)]
    data = [
        {"name": NAMES[i], "value": reading_value(i, second), "unit": UNITS[NAMES[i]], "timestamp": ts} for i in picks
    ]
    return [{"op": "insert", "bucket": "metrics", "data": item} for item in data], tuple(NAMES[i] for i in picks)


def fixed_loop_s() -> float:
    """CPU seconds of a fixed piece of pure Python on this process's core, the
    fastest of 5: the same on a machine running at its usual speed. Cases on
    this 2-core virtual machine sometimes ran everything (server and client
    alike) about twice as slowly, with no other process busy and no steal
    time reported; this figure tells such cases apart."""
    best = math.inf
    for _ in range(5):
        started = time.process_time()
        sum(i * i for i in range(200_000))
        best = min(best, time.process_time() - started)
    return best


def start_profiler(py_spy: str | None, server: servers.Server, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy recording the server (all threads: the database thread evaluates) until interrupted."""
    if not py_spy:
        return None
    output = server.log_path.parent / f"py-spy-{name}.txt"
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250", "--output", str(output)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def measure(
    case: Case, server: servers.Server, database: Any, grid: Grid, truth: Truth, options: Options
) -> None:
    viewer_conn = await open_conn(server.ws, VIEWER_TOKEN, "viewer")
    admin = await open_conn(server.ws, ADMIN_TOKEN, "admin")
    try:
        refused = await first_results(case, viewer_conn, grid, truth, options.repeats)

        # The page: its subscriptions stay open on the viewer's connection.
        viewer = Viewer(viewer_conn)
        specs: dict[str, QuerySpec] = {}
        for spec in PAGE_SPECS:
            if spec_label(spec) in refused:
                continue
            seconds, sub_id, data = await subscribe(viewer_conn, spec)
            viewer.subs[sub_id] = Subscription(spec_label(spec), data)
            specs[sub_id] = spec
            case.figures[f"page_open_ms[{spec_label(spec)}]"] = ms(seconds)
        await settle([viewer])  # then frames are only timestamped until the phase ends

        # The writer: paced at TX_PER_S whatever the replies do.
        count = max(1, round(options.seconds * TX_PER_S))
        writes: list[Write] = []
        pendings = []
        backends = BackendMeter(database) if database.kind == "postgres" else None
        # The machine's speed just before the phase, on both cores (the server is idle now).
        pin(0)
        case.figures["loop_ms_server_core"] = ms(fixed_loop_s())
        pin(1)
        case.figures["loop_ms_client_core"] = ms(fixed_loop_s())
        profiler = start_profiler(options.py_spy, server, f"{case.database}-{case.size}")
        meter = PhaseMeter([server.pid])
        meter.start()
        start = time.perf_counter()
        last_ts = 0
        for index in range(count):
            delay = start + index / TX_PER_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ts = max(now_ms(), last_ts + 1)
            last_ts = ts
            operations, names = transaction(index, ts, grid)
            pendings.append(admin.send("store.transaction", operations=operations))
            writes.append(Write(index, ts, names, pendings[-1].t_sent))
        by_ts = {write.ts: write.index for write in writes}

        for write, pending in zip(writes, pendings, strict=True):
            write.replied, frame = await admin.reply(pending, options.timeout)
            results = result_data("admin", pending, frame)
            sent = [op["data"] for op in pending.request["operations"]]
            records = [item.get("data") for item in results.get("results", [])] if isinstance(results, dict) else []
            if len(records) != len(sent) or any(
                not isinstance(record, dict) or any(record.get(k) != v for k, v in item.items())
                for record, item in zip(records, sent, strict=False)
            ):
                case.failures.append(f"transaction {write.index} returned {brief(results)}")

        def is_final(v: Viewer) -> bool:
            for sub_id, sub in v.subs.items():
                spec = specs[sub_id]
                last = max((w.index for w in writes if affects(spec, w)), default=-1)
                level = reflected_level(spec, v.state(sub.label), writes, grid.size, grid, by_ts)
                if level is None or level < last:
                    return False
            return True

        reached, phase = await await_final([viewer], is_final, meter, options.timeout)
        case.figures["loop_ms_client_core_after"] = ms(fixed_loop_s())
        db_cpu = backends.seconds() if backends else None
        meter.stop()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            profiler.wait(timeout=60)
            case.notes.append(
                f"py-spy profile of the writer phase: {profiler.args[profiler.args.index('--output') + 1]}"
            )
        await linger([viewer])
        if not reached:
            case.failures.append(f"not every subscription reflected the last write {options.timeout:.0f} s after it")

        # The phase figures and their contention notes as the other scenarios report them.
        phase_result = RunResult("S5")
        phase_result.add_phase(phase, count)
        case.notes.extend(phase_result.notes)
        case.figures.update(
            phase_result.figures,
            transactions=count,
            db_backend_cpu_ms_per_tx=None if db_cpu is None else round(db_cpu * 1000 / count, 2),
        )
        case.figures["server_cpu_ms_per_tx"] = case.figures.pop("server_cpu_ms_per_insert")
        acks = [w.replied - w.sent for w in writes if w.replied is not None]
        case.figures["ack_p50_ms"] = ms(percentile(acks, 50))
        case.figures["ack_p99_ms"] = ms(percentile(acks, 99))
        case.figures["ack_max_ms"] = ms(max(acks, default=None))
        for sub_id, sub in viewer.subs.items():
            figures = attribute(specs[sub_id], sub, viewer.pushes(sub.label), writes, grid.size, grid, by_ts)
            case.subs[sub.label] = figures
            case.failures.extend(figures.failures[:5])

        # Final results against the raw table (the writer has stopped: it no longer changes).
        for sub_id, sub in viewer.subs.items():
            case.failures.extend(
                check_result(f"final result of {sub.label}", specs[sub_id], viewer.state(sub.label), truth)
            )
        case.failures.extend(viewer_conn.violations + admin.violations)
    finally:
        gc.enable()
        await viewer_conn.close()
        await admin.close()


# --------------------------------------------------------------------------- report


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:,.1f}" if value >= 10 else f"{value:.2f}")


def first_result_ms(case: Case, label: str) -> float | None:
    samples = case.first_results.get(label)
    return ms(statistics.median(samples)) if samples else None


def case_rows(case: Case) -> list[tuple[str, str]]:
    f = case.figures
    rows = [
        (
            "load (SQL) / rebuild_aggregates / checkpoint / server start",
            f"{f.get('load_s', '-')} s / {f.get('rebuild_aggregates_s', '-')} s / {f.get('checkpoint_s', '-')} s / "
            f"{f.get('server_start_s', '-')} s",
        ),
        ("server CPU per transaction", f"{fmt_ms(f.get('server_cpu_ms_per_tx'))} ms"),
    ]
    if f.get("db_backend_cpu_ms_per_tx") is not None:
        rows.append(("PostgreSQL backends' CPU per transaction", f"{fmt_ms(f['db_backend_cpu_ms_per_tx'])} ms"))
    rows.append(
        (
            "write acknowledged p50 / p99 / max",
            f"{fmt_ms(f.get('ack_p50_ms'))} / {fmt_ms(f.get('ack_p99_ms'))} / {fmt_ms(f.get('ack_max_ms'))} ms",
        )
    )
    for label, sub in case.subs.items():
        extra = f", {sub.other_pushes} timer pushes" if sub.other_pushes else ""
        missing = f", MISSING {sub.missing}" if sub.missing else ""
        rows.append(
            (
                f"push p50 / p99 {label}",
                f"{fmt_ms(ms(percentile(sub.latencies, 50)))} / {fmt_ms(ms(percentile(sub.latencies, 99)))} ms "
                f"({sub.own_pushes} pushes for {sub.affecting} writes{extra}{missing})",
            )
        )
    for label, samples in case.first_results.items():
        rows.append(
            (
                f"first result {label}",
                f"{fmt_ms(first_result_ms(case, label))} ms (median of {len(samples)}; "
                f"{', '.join(fmt_ms(ms(s)) for s in samples)})",
            )
        )
    rows.append(
        (
            "fixed CPU loop before the phase on the server / client core, after it on the client core",
            f"{fmt_ms(f.get('loop_ms_server_core'))} / {fmt_ms(f.get('loop_ms_client_core'))}, "
            f"{fmt_ms(f.get('loop_ms_client_core_after'))} ms",
        )
    )
    rows.append(
        (
            "phase / client CPU ratio / foreign CPU server core, client core, machine",
            f"{f.get('phase_s', '-')} s / {f.get('client_cpu_ratio', '-')} / "
            f"{f.get('foreign_cpu_server_core_s', '-')}, {f.get('foreign_cpu_client_core_s', '-')}, "
            f"{f.get('foreign_cpu_machine_s', '-')} s",
        )
    )
    return rows


def case_json(case: Case, revision: str, options: Options) -> dict[str, JSON]:
    return {
        "scenario": "S5",
        "database": case.database,
        "size": case.size,
        "ok": case.ok,
        "revision": revision,
        "smoke": options.smoke,
        "seconds": options.seconds,
        "spacing_ms": case.spacing_ms,
        "figures": case.figures,
        "first_results_ms": {label: [ms(s) for s in samples] for label, samples in case.first_results.items()},
        "pushes": {
            label: {
                "p50_ms": ms(percentile(sub.latencies, 50)),
                "p99_ms": ms(percentile(sub.latencies, 99)),
                "samples": len(sub.latencies),
                "pushes": sub.pushes,
                "own_pushes": sub.own_pushes,
                "timer_pushes": sub.other_pushes,
                "writes": sub.affecting,
                "missing": sub.missing,
            }
            for label, sub in case.subs.items()
        },
        "failures": case.failures,
        "notes": case.notes,
    }


def target_rows(cases: Sequence[Case]) -> list[str]:
    """Each database's largest case against issue 12's targets (set for 10,000,000 readings)."""
    lines = []
    for kind in dict.fromkeys(case.database for case in cases):
        mine = sorted((case for case in cases if case.database == kind), key=lambda case: case.size)
        big, small = mine[-1], mine[0]
        at = f"at {big.size:,}" + ("" if big.size == TARGET_SIZE else f" (the targets are for {TARGET_SIZE:,})")
        lines.append(f"{kind} {at}:")

        def verdict(value: float | None, limit: float) -> str:
            if value is None:
                return "no figure"
            return "met" if value <= limit else f"MISSED by {value - limit:,.1f} ({value / limit:.2f}x)"

        cpu_big, cpu_small = big.figures.get("server_cpu_ms_per_tx"), small.figures.get("server_cpu_ms_per_tx")
        if big is not small and cpu_big is not None and cpu_small:
            ratio = cpu_big / cpu_small
            lines.append(
                f"  server CPU per transaction {cpu_big:.2f} ms vs {cpu_small:.2f} ms at {small.size:,}: "
                f"{ratio:.2f}x (target <= {TARGET_CPU_RATIO}x): "
                f"{'met' if ratio <= TARGET_CPU_RATIO else 'MISSED'}"
            )
        ack = big.figures.get("ack_p99_ms")
        lines.append(
            f"  write ack p99 {fmt_ms(ack)} ms (target <= {TARGET_ACK_P99_MS:.0f}): {verdict(ack, TARGET_ACK_P99_MS)}"
        )
        for label, sub in big.subs.items():
            p99 = ms(percentile(sub.latencies, 99))
            if sub.affecting:
                lines.append(
                    f"  push p99 {label} {fmt_ms(p99)} ms (target <= {TARGET_PUSH_P99_MS:.0f}): "
                    f"{verdict(p99, TARGET_PUSH_P99_MS)}"
                )
        for label in (spec_label(METRIC_STATS), WHOLE_RANGE_LABEL):
            value = first_result_ms(big, label)
            lines.append(
                f"  first result {label} {fmt_ms(value)} ms (target <= {TARGET_FIRST_RESULT_MS:.0f}): "
                f"{verdict(value, TARGET_FIRST_RESULT_MS)}"
            )
    return lines


def revision() -> str:
    """The commit measured (+uncommitted when tracked files differ); BENCH_REVISION names it in
    a copy that is no git checkout (`git archive` of the commit to measure)."""
    if os.environ.get("BENCH_REVISION"):
        return os.environ["BENCH_REVISION"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=servers.PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=servers.PROJECT_DIR,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+uncommitted" if dirty else "")


def parse_size(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def database_list(text: str) -> list[str]:
    kinds = text.split(",")
    if any(kind not in DATABASES for kind in kinds):
        raise argparse.ArgumentTypeError(f"choose from {','.join(DATABASES)}")
    return kinds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=None,
        help="readings preloaded, comma-separated (10000,1m,10m; default 10000,1000000,10000000)",
    )
    parser.add_argument("--databases", default=["sqlite", "postgres"], type=database_list, help="sqlite,postgres")
    parser.add_argument("--seconds", type=float, default=None, help="writer phase (default 30; 5 with --smoke)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="first-result measurements per query, median reported (default 5; 3 with --smoke)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for replies and final pushes")
    parser.add_argument(
        "--smoke", action="store_true", help=f"CI size: {SMOKE_SIZE:,} readings, {SMOKE_SECONDS:.0f} s of writes"
    )
    parser.add_argument("--keep", action="store_true", help="keep every case's temp dir (server log, SQLite file)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before measuring, wait up to this long for a second without other busy processes",
    )
    parser.add_argument(
        "--spacing-ms",
        type=int,
        default=None,
        help="ms between a name's preloaded readings, for every size (default: 1000, a 1 s collector, "
        "or more where a size is too small to fill the page's 1-hour charts: 5000 for 10,000)",
    )
    parser.add_argument(
        "--py-spy",
        default=None,
        metavar="BINARY",
        help="record the server with this py-spy during each writer phase (collapsed stacks in "
        "the kept temp dir; sampling slows the server, so such runs are not for figures)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = (
        [parse_size(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([SMOKE_SIZE] if args.smoke else list(DEFAULT_SIZES))
    )
    options = Options(
        seconds=args.seconds if args.seconds is not None else (SMOKE_SECONDS if args.smoke else 30.0),
        repeats=args.repeats or (3 if args.smoke else 5),
        timeout=args.timeout,
        keep=args.keep or bool(args.py_spy),
        smoke=args.smoke,
        py_spy=args.py_spy,
        quiet_wait=args.quiet_wait,
        spacing_ms=args.spacing_ms,
    )
    servers.raise_fd_limit()
    rev = revision()
    cases = []
    for kind in args.databases:
        for size in sizes:
            print(f"S5 {kind} {size:,} readings ...", file=sys.stderr, flush=True)
            case = run_case(kind, size, options)
            cases.append(case)
            print("BENCH_JSON " + json.dumps(case_json(case, rev, options), separators=(",", ":")), flush=True)
            rows = case_rows(case)
            width = max(len(name) for name, _ in rows)
            print(
                f"\nS5 {kind}, {size:,} readings, code {rev}, {options.seconds:g} s of writes at "
                f"{TX_PER_S:g} transactions/s of {INSERTS_PER_TX}, preloaded {case.spacing_ms} ms apart per name"
            )
            for name, value in rows:
                print(f"  {name:<{width}}  {value}")
            print(f"  status: {'OK' if case.ok else f'FAIL ({len(case.failures)})'}")
            for note in case.notes:
                print(f"  note: {note}")
            for failure in case.failures:
                print(f"  FAIL: {failure}")
            sys.stdout.flush()
    if not args.smoke:
        print("\nAgainst issue 12's targets:")
        print("\n".join(target_rows(cases)))
    ok = all(case.ok for case in cases)
    print(f"\nresult: {'all checks passed' if ok else 'FAILURES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
