"""Soak test: two server processes on PostgreSQL + Redis, mixed writes, churning viewers; every final state checked.

    bench/soak.sh                         # 500 viewers, 20,000 writes paced over --duration
    bench/soak.sh --smoke                 # tiny sizes, a correctness check in under 30 s
    .venv/bin/python bench/soak.py --viewers 200 --writes 5000 --duration 60

What it does (bench/servers.py starts and stops the servers):
  1. A fresh PostgreSQL database, migrated and seeded; two uvicorn processes with the Redis
     channel layer, production settings (DEBUG off), on free loopback ports.
  2. Viewers, spread evenly over the two processes, each log in and subscribe to a mix of
     metric-count, latest-metrics {"n":10}, metrics-by-name for a few names and active-alerts.
  3. Admins (two per process) write, paced to spread --writes operations over --duration:
     mostly inserts, some updates and deletes, some store.transaction batches (2-6 operations,
     each counted as a write), a few alert inserts.  Each admin updates and deletes only records
     it inserted and saw acknowledged, so no write can fail for a legitimate reason.  Deletes go
     mostly to the subscribed names, which keeps metrics-by-name results (sent whole on every
     change) small.  Meanwhile a fraction of the viewers disconnect (half with a close frame,
     half by dropping TCP) and reconnect: log in, subscribe again.
  4. After the last write, wait (bounded) until no push has arrived for a while, read each query's
     result afresh through the protocol on both processes (store.count / store.last / store.where
     / store.all) and compare it with the last result every viewer holds for that subscription.

Checks (exit status 1 if any fails): no lost final state (a subscription whose last result
differs from the fresh read), no push repeating the subscription's previous result, no error
reply, no unexpected close or protocol violation, both processes agree on every fresh read, each
process's active subscriptions (store.stats) equal the subscriptions its live viewers hold (the
churned connections' subscriptions are gone).  Exit status 2: the run could not be set up.

Figures: pushes delivered (per query), duplicate pushes, lost final states, reconnects, writes
by kind and rate, per server process CPU (write phase and lifetime) and peak RSS (VmHWM), the
PostgreSQL backends' CPU, this client's CPU ratio, and the CPU other processes took on the
machine (contention: other engineers' runs share the two cores).  Only the last result of each
subscription is kept, not every push, so memory stays flat however long the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import servers
from loadclient import (
    ADMIN_TOKEN,
    CONNECT_CONCURRENCY,
    VIEWER_TOKEN,
    Conn,
    PhaseFigures,
    PhaseMeter,
    RequestFailed,
    bounded_gather,
    brief,
    cpu_seconds,
    default_origin,
    describe,
    spec_label,
)

JSON = Any
QuerySpec = tuple[str, dict[str, JSON] | None]

HOT_NAMES = ("cpu", "memory", "disk", "network")  # the names viewers subscribe to
COLD_NAMES = tuple(f"host{h}.{m}" for h in range(10) for m in ("load", "iops", "temp", "rx"))
METRIC_COUNT: QuerySpec = ("metric-count", None)
LATEST_10: QuerySpec = ("latest-metrics", {"n": 10})
ACTIVE_ALERTS: QuerySpec = ("active-alerts", None)

# Admin request mix (shares of requests; the remaining 70% are single metric inserts).
P_ALERT, P_TRANSACTION, P_UPDATE, P_DELETE = 0.01, 0.10, 0.10, 0.09
P_HOT_INSERT = 0.12  # share of metric inserts that go to a subscribed name
HOT_KEEP = 8  # per admin and hot name: above this many records, deletes take the oldest
ADMINS_PER_SERVER = 2
ADMIN_WINDOW = 16  # requests in flight per admin connection
QUIET_S = 1.5  # no push for this long: the fan-out has finished
LINGER_S = 1.0  # after the final states matched, listen for late (stale) pushes
EXAMPLES = 8


@dataclass(frozen=True)
class Sizes:
    viewers: int = 500
    writes: int = 20_000
    duration: float = 200.0  # seconds the writes are paced over; the write phase stops at twice this
    churn_fraction: float = 0.2  # viewers that disconnect and reconnect
    churn_rate: float = 2.0  # reconnects per second, over the write phase
    timeout: float = 90.0  # bound on waiting for quiescence and final states


SMOKE = Sizes(viewers=20, writes=300, duration=6.0, churn_fraction=0.5, churn_rate=3.0, timeout=20.0)


# --------------------------------------------------------------------------- viewers


@dataclass
class SubState:
    """What one subscription has received: its last result and counters, not every push."""

    label: str
    spec: QuerySpec
    last: JSON
    pushes: int = 0
    duplicates: int = 0
    first_duplicate: str = ""
    last_push_t: float | None = None

    def receive(self, t: float, data: JSON) -> None:
        self.pushes += 1
        if data == self.last:
            self.duplicates += 1
            self.first_duplicate = self.first_duplicate or f"push #{self.pushes} repeats {describe(data)}"
        self.last = data
        self.last_push_t = t


class TrackingConn(Conn):
    """A loadclient connection that keeps only each subscription's last result (a soak brings millions of pushes)."""

    def __init__(self, url: str, origin: str | None, label: str) -> None:
        super().__init__(url, origin, label)
        self.subs: dict[str, SubState] = {}
        self.early: dict[str, list[tuple[float, JSON]]] = {}
        self.push_count = 0
        self.push_bytes = 0

    def on_push(self, t: float, frame: dict[str, JSON], nbytes: int) -> None:
        self.push_count += 1
        self.push_bytes += nbytes
        sub_id = frame.get("subscriptionId")
        state = self.subs.get(sub_id)  # type: ignore[arg-type]
        if state is None:
            # The subscribe reply and the first push can come in one read, before the task that
            # awaits the reply has registered the subscription: keep the push for `register`.
            self.early.setdefault(str(sub_id), []).append((t, frame.get("data")))
        else:
            state.receive(t, frame.get("data"))

    def register(self, sub_id: str, spec: QuerySpec, initial: JSON) -> None:
        state = self.subs[sub_id] = SubState(spec_label(spec), spec, initial)
        for t, data in self.early.pop(sub_id, []):
            state.receive(t, data)


@dataclass
class SoakViewer:
    index: int
    server: int
    specs: list[QuerySpec]
    churns: bool
    conn: TrackingConn | None = None  # None while reconnecting
    retired: list[TrackingConn] = field(default_factory=list)  # closed connections, for their counters
    reconnects: int = 0

    def conns(self) -> list[TrackingConn]:
        return [*self.retired, *([self.conn] if self.conn else [])]


def viewer_specs(rng: random.Random) -> list[QuerySpec]:
    """A random mix of the dashboard's queries, at least one."""
    specs: list[QuerySpec] = []
    if rng.random() < 0.7:
        specs.append(METRIC_COUNT)
    if rng.random() < 0.5:
        specs.append(LATEST_10)
    specs.extend(("metrics-by-name", {"name": name}) for name in rng.sample(HOT_NAMES, rng.choice((0, 1, 1, 2))))
    if rng.random() < 0.4:
        specs.append(ACTIVE_ALERTS)
    return specs or [METRIC_COUNT]


def subscribe_fields(spec: QuerySpec) -> dict[str, JSON]:
    query, params = spec
    return {"query": query} if params is None else {"query": query, "params": params}


async def connect_viewer(viewer: SoakViewer, urls: Sequence[str]) -> None:
    """Open a connection for the viewer on its server, log in and subscribe to its queries."""
    url = urls[viewer.server]
    label = f"viewer {viewer.index}@server{viewer.server}" + (f"#{viewer.reconnects}" if viewer.reconnects else "")
    conn = await TrackingConn.open(url, default_origin(url), label)
    try:
        await conn.call("auth.login", token=VIEWER_TOKEN)
        for spec in viewer.specs:
            data = await conn.call("store.subscribe", **subscribe_fields(spec))
            if not isinstance(data, dict) or not isinstance(data.get("subscriptionId"), str) or "data" not in data:
                raise RequestFailed(f"{label}: malformed subscribe result {brief(data)}")
            conn.register(data["subscriptionId"], spec, data["data"])
    except BaseException:
        conn.abort()
        raise
    viewer.conn = conn


async def open_viewers(count: int, urls: Sequence[str], churn_fraction: float, rng: random.Random) -> list[SoakViewer]:
    viewers = [SoakViewer(i, i % len(urls), viewer_specs(rng), churns=i < count * churn_fraction) for i in range(count)]
    outcomes = await bounded_gather([lambda v=v: connect_viewer(v, urls) for v in viewers], CONNECT_CONCURRENCY)
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if errors:
        raise RequestFailed(f"{len(errors)} of {count} viewers failed to set up; first: {errors[0]!r}")
    return viewers


@dataclass
class ChurnStats:
    clean: int = 0
    dropped: int = 0
    failures: list[str] = field(default_factory=list)


async def reconnect(viewer: SoakViewer, urls: Sequence[str], abrupt: bool, stats: ChurnStats) -> None:
    old, viewer.conn = viewer.conn, None
    assert old is not None
    viewer.retired.append(old)
    if abrupt:
        old.abort()  # TCP gone without a close frame: the server must notice and clean up by itself
        stats.dropped += 1
    else:
        await old.close()
        stats.clean += 1
    viewer.reconnects += 1
    last_error: BaseException | None = None
    for _ in range(3):
        try:
            await connect_viewer(viewer, urls)
            return
        except (RequestFailed, OSError) as error:
            last_error = error
            await asyncio.sleep(0.5)
    stats.failures.append(f"viewer {viewer.index}: reconnect failed 3 times: {last_error}")


async def churn(
    viewers: Sequence[SoakViewer],
    urls: Sequence[str],
    rate: float,
    stop: asyncio.Event,
    rng: random.Random,
    stats: ChurnStats,
) -> None:
    """Reconnect random churning viewers at `rate` per second until `stop` is set."""
    candidates = [viewer for viewer in viewers if viewer.churns]
    tasks: set[asyncio.Task[None]] = set()
    while candidates and rate > 0 and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1 / rate)
        except TimeoutError:
            pass
        viewer = rng.choice(candidates)
        if stop.is_set() or viewer.conn is None:  # stopping, or this one is still reconnecting
            continue
        task = asyncio.create_task(reconnect(viewer, urls, abrupt=rng.random() < 0.5, stats=stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)  # each reconnect is bounded by the connection timeouts


# --------------------------------------------------------------------------- writers


class Writer:
    """One admin connection's paced writes.  It updates and deletes only records it inserted and
    saw acknowledged, so the admins never race each other and every write must succeed."""

    def __init__(self, conn: Conn, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.hot: dict[str, deque[str]] = {name: deque() for name in HOT_NAMES}  # oldest first
        self.cold: list[str] = []
        self.window = asyncio.Semaphore(ADMIN_WINDOW)
        self.outstanding: set[asyncio.Future[Any]] = set()
        self.requests: Counter[str] = Counter()
        self.operations: Counter[str] = Counter()
        self.errors: list[str] = []
        self.n = 0

    # keys

    def _take_for_update(self) -> str | None:
        if self.rng.random() < 0.5:
            name = self.rng.choice(HOT_NAMES)
            if self.hot[name]:
                return self.hot[name].popleft()
        return self._take_cold()

    def _take_for_delete(self) -> str | None:
        # Keep the subscribed names' results small: delete their oldest records first.
        name = max(HOT_NAMES, key=lambda n: len(self.hot[n]))
        if len(self.hot[name]) > HOT_KEEP:
            return self.hot[name].popleft()
        return self._take_cold()

    def _take_cold(self) -> str | None:
        if not self.cold:
            return None
        i = self.rng.randrange(len(self.cold))
        self.cold[i], self.cold[-1] = self.cold[-1], self.cold[i]
        return self.cold.pop()

    def _keep(self, record: JSON) -> None:
        """A record this admin may update or delete later (inserted or updated, acknowledged)."""
        name, key = record.get("name"), record.get("id")
        if not isinstance(key, str):
            self.errors.append(f"{self.conn.label}: record without a key {brief(record)}")
        elif name in self.hot:
            self.hot[name].append(key)
        else:
            self.cold.append(key)

    # operations: (operation for a transaction, kind, callback on its result)

    def _metric(self) -> dict[str, JSON]:
        self.n += 1
        names = HOT_NAMES if self.rng.random() < P_HOT_INSERT else COLD_NAMES
        return {
            "name": self.rng.choice(names),
            "value": round(self.rng.uniform(0, 100), 2),
            "unit": "%",
            "timestamp": int(time.time() * 1000),
        }

    def _insert(self) -> tuple[dict[str, JSON], str, Callable[[JSON], None]]:
        return {"op": "insert", "bucket": "metrics", "data": self._metric()}, "insert", self._keep

    def _update_or_insert(self) -> tuple[dict[str, JSON], str, Callable[[JSON], None]]:
        key = self._take_for_update()
        if key is None:
            return self._insert()
        data = {"value": round(self.rng.uniform(0, 100), 2)}
        return {"op": "update", "bucket": "metrics", "key": key, "data": data}, "update", self._keep

    def _delete_or_insert(self) -> tuple[dict[str, JSON], str, Callable[[JSON], None]]:
        key = self._take_for_delete()
        if key is None:
            return self._insert()
        return {"op": "delete", "bucket": "metrics", "key": key}, "delete", self._expect_deleted

    def _expect_deleted(self, data: JSON) -> None:
        if data != {"deleted": True}:
            self.errors.append(f"{self.conn.label}: delete returned {brief(data)}")

    def _alert(self) -> tuple[dict[str, JSON], str, Callable[[JSON], None]]:
        data = {
            "metric": self.rng.choice(HOT_NAMES),
            "threshold": round(self.rng.uniform(50, 100), 1),
            "severity": self.rng.choice(("low", "medium", "high")),
            "timestamp": int(time.time() * 1000),
        }
        return {"op": "insert", "bucket": "alerts", "data": data}, "alert", lambda _: None

    # requests

    def send_next(self, budget: int) -> int:
        """Send one request of at most `budget` write operations; return how many it has."""
        draw = self.rng.random()
        if draw < P_TRANSACTION and budget >= 2:
            return self._send_transaction(self.rng.randint(2, min(6, budget)))
        draw -= P_TRANSACTION
        if draw < P_ALERT:
            operation = self._alert()
        elif draw < P_ALERT + P_UPDATE:
            operation = self._update_or_insert()
        elif draw < P_ALERT + P_UPDATE + P_DELETE:
            operation = self._delete_or_insert()
        else:
            operation = self._insert()
        fields, kind, on_result = operation
        fields = {name: value for name, value in fields.items() if name != "op"}
        self._send(f"store.{'insert' if kind == 'alert' else kind}", fields, kind, on_result)
        self.operations[kind] += 1
        return 1

    def _send_transaction(self, size: int) -> int:
        makers = (self._insert, self._insert, self._update_or_insert, self._delete_or_insert)
        operations = [self.rng.choice(makers)() for _ in range(size)]

        def on_result(data: JSON) -> None:
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list) or [r.get("index") for r in results] != list(range(size)):
                self.errors.append(f"{self.conn.label}: transaction returned {brief(data)}")
                return
            for (_, _, callback), result in zip(operations, results, strict=True):
                callback(result.get("data"))

        self._send("store.transaction", {"operations": [op for op, _, _ in operations]}, "transaction", on_result)
        self.operations.update(kind for _, kind, _ in operations)
        return size

    def _send(self, op: str, fields: dict[str, JSON], kind: str, on_result: Callable[[JSON], None]) -> None:
        pending = self.conn.send(op, **fields)
        self.requests[kind] += 1
        self.outstanding.add(pending.future)

        def done(future: asyncio.Future[tuple[float, dict[str, JSON]]]) -> None:
            self.outstanding.discard(future)
            self.window.release()
            if future.exception() is not None:
                self.errors.append(f"{self.conn.label}: {op} failed: {future.exception()}")
                return
            _, frame = future.result()
            if frame.get("type") != "result":
                self.errors.append(f"{self.conn.label}: {brief(pending.request)} got {brief(frame)}")
            else:
                on_result(frame.get("data"))

        pending.future.add_done_callback(done)


async def write_phase(writers: Sequence[Writer], sizes: Sizes) -> tuple[int, float, bool]:
    """Pace `sizes.writes` operations over `sizes.duration` seconds, round-robin over the admins.
    Returns (operations sent, seconds until the last reply, whether the time bound cut it short)."""
    rate = sizes.writes / sizes.duration
    start = time.perf_counter()
    hard_stop = start + 2 * sizes.duration
    sent, turn, cut_short = 0, 0, False
    while sent < sizes.writes:
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        writer = writers[turn % len(writers)]
        turn += 1
        try:  # a full window means the server is behind: wait, but never past the bound
            await asyncio.wait_for(writer.window.acquire(), max(0.0, hard_stop - time.perf_counter()))
        except TimeoutError:
            cut_short = True
            break
        sent += writer.send_next(sizes.writes - sent)
    outstanding = [future for writer in writers for future in writer.outstanding]
    if outstanding:
        await asyncio.wait(outstanding, timeout=max(10.0, hard_stop - time.perf_counter()))
    return sent, time.perf_counter() - start, cut_short


# --------------------------------------------------------------------------- final states


def fresh_read(spec: QuerySpec) -> tuple[str, dict[str, JSON]]:
    """The store operation that reads what a query returns."""
    query, params = spec
    if query == "metric-count":
        return "store.count", {"bucket": "metrics"}
    if query == "latest-metrics":
        return "store.last", {"bucket": "metrics", "n": params["n"]}  # type: ignore[index]
    if query == "metrics-by-name":
        return "store.where", {"bucket": "metrics", "filter": {"name": params["name"]}}  # type: ignore[index]
    if query == "active-alerts":
        return "store.all", {"bucket": "alerts"}
    raise ValueError(f"no fresh read for {query}")


def total_pushes(viewers: Sequence[SoakViewer]) -> int:
    return sum(conn.push_count for viewer in viewers for conn in viewer.conns())


async def quiesce(viewers: Sequence[SoakViewer], timeout: float) -> tuple[bool, float]:
    """Wait until no push has arrived for QUIET_S (bounded); return (quiet, seconds waited)."""
    start = time.perf_counter()
    seen, since = total_pushes(viewers), time.perf_counter()
    while time.perf_counter() - start < timeout:
        await asyncio.sleep(0.1)
        now = total_pushes(viewers)
        if now != seen:
            seen, since = now, time.perf_counter()
        elif time.perf_counter() - since >= QUIET_S:
            return True, time.perf_counter() - start
    return False, time.perf_counter() - start


async def read_finals(admins: Sequence[Conn], specs: dict[str, QuerySpec], failures: list[str]) -> dict[str, JSON]:
    """Each query's result (by label), read afresh on every process; the processes must agree."""
    finals: dict[str, JSON] = {}
    for label, spec in sorted(specs.items()):
        op, fields = fresh_read(spec)
        reads = [await admin.call(op, **fields) for admin in admins]
        finals[label] = reads[0]
        if any(read != reads[0] for read in reads[1:]):
            failures.append(
                f"{op} {brief(fields)}: the server processes disagree: " + " vs ".join(describe(read) for read in reads)
            )
    return finals


def lost_states(viewers: Sequence[SoakViewer], finals: dict[str, JSON]) -> list[str]:
    lost = []
    now = time.perf_counter()
    for viewer in viewers:
        if viewer.conn is None:
            continue  # its reconnect failed: counted as a churn failure
        for sub_id, state in viewer.conn.subs.items():
            if state.last != finals[state.label]:
                age = "no push" if state.last_push_t is None else f"last push {now - state.last_push_t:.1f}s ago"
                lost.append(
                    f"{viewer.conn.label} {state.label} ({sub_id}): holds {describe(state.last)}, "
                    f"fresh read {describe(finals[state.label])}; {state.pushes} pushes, {age}"
                )
    return lost


async def check_finals(viewers: Sequence[SoakViewer], finals: dict[str, JSON], timeout: float) -> list[str]:
    """Lost final states: compared until they match (pushes may still be in flight) or the bound
    passes, then once more after LINGER_S, so that a late stale push is caught too."""
    deadline = time.perf_counter() + timeout
    lost = lost_states(viewers, finals)
    while lost and time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        lost = lost_states(viewers, finals)
    await asyncio.sleep(LINGER_S)
    return lost_states(viewers, finals)


async def check_subscription_counts(
    admins: Sequence[Conn], viewers: Sequence[SoakViewer]
) -> tuple[list[int], list[int]]:
    """(active subscriptions each process reports, subscriptions our live viewers hold there)."""
    reported, ours = [], []
    for server, admin in enumerate(admins):
        stats = await admin.call("store.stats")
        active = stats.get("queries", {}).get("activeSubscriptions") if isinstance(stats, dict) else None
        reported.append(active if isinstance(active, int) else -1)
        ours.append(sum(len(v.conn.subs) for v in viewers if v.server == server and v.conn is not None))
    return reported, ours


# --------------------------------------------------------------------------- run


@dataclass
class Report:
    figures: dict[str, JSON] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class BackendMeter:
    """CPU of the PostgreSQL backends serving the run's database (they persist: conn_max_age)."""

    def __init__(self, cluster: servers.Cluster) -> None:
        self.cluster = cluster
        self.start = self._sample()

    def _sample(self) -> dict[int, float]:
        try:
            return {pid: cpu_seconds([pid]) for pid in self.cluster.backend_pids()}
        except Exception:
            return {}

    def seconds(self) -> float:
        # A backend that exited during the phase takes its CPU with it: a lower bound.
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self._sample().items())


async def soak(cluster: servers.Cluster, sizes: Sizes, seed: int) -> Report:
    report = Report()
    rng = random.Random(seed)
    urls = cluster.urls
    started = time.perf_counter()
    admins = [await open_admin(urls[i % len(urls)], i) for i in range(ADMINS_PER_SERVER * len(urls))]
    viewers = await open_viewers(sizes.viewers, urls, sizes.churn_fraction, rng)
    report.figures["setup_s"] = round(time.perf_counter() - started, 1)
    try:
        outcome = await run_phases(cluster, sizes, rng, admins, viewers, report)
        add_figures(report, sizes, viewers, outcome)
        add_failures(report, sizes, admins, viewers, outcome)
    finally:
        conns = list(admins) + [viewer.conn for viewer in viewers if viewer.conn is not None]
        await bounded_gather([conn.close for conn in conns], CONNECT_CONCURRENCY)
    report.figures["duration_s"] = round(time.perf_counter() - started, 1)
    return report


async def open_admin(url: str, index: int) -> Conn:
    conn = await Conn.open(url, default_origin(url), f"admin {index}")
    await conn.call("auth.login", token=ADMIN_TOKEN)
    return conn


@dataclass
class Outcome:
    """What the phases produced, for the figures and the checks."""

    writers: list[Writer]
    churn: ChurnStats
    sent: int
    write_s: float
    cut_short: bool
    quiet: bool
    settle_s: float
    finals: dict[str, JSON]
    lost: list[str]
    phase: PhaseFigures
    database_cpu_s: float
    subscriptions_reported: list[int]
    subscriptions_held: list[int]


async def run_phases(
    cluster: servers.Cluster,
    sizes: Sizes,
    rng: random.Random,
    admins: list[Conn],
    viewers: list[SoakViewer],
    report: Report,
) -> Outcome:
    """Writes with churn, then quiescence and the final-state checks."""
    meter = PhaseMeter(cluster.pids)
    meter.start()
    backends = BackendMeter(cluster)
    writers = [Writer(admin, random.Random(rng.random())) for admin in admins]
    stop_churn = asyncio.Event()
    churn_stats = ChurnStats()
    churner = asyncio.create_task(churn(viewers, cluster.urls, sizes.churn_rate, stop_churn, rng, churn_stats))
    sent, write_s, cut_short = await write_phase(writers, sizes)
    stop_churn.set()
    await churner

    quiet, settle_s = await quiesce(viewers, sizes.timeout)
    first_admin_per_server = admins[: len(cluster.urls)]  # admins i and i + N share server i
    specs = {state.label: state.spec for viewer in viewers if viewer.conn for state in viewer.conn.subs.values()}
    finals = await read_finals(first_admin_per_server, specs, report.failures)
    lost = await check_finals(viewers, finals, sizes.timeout)
    phase = meter.snapshot()
    meter.stop()
    reported, held = await check_subscription_counts(first_admin_per_server, viewers)
    return Outcome(
        writers,
        churn_stats,
        sent,
        write_s,
        cut_short,
        quiet,
        settle_s,
        finals,
        lost,
        phase,
        backends.seconds(),
        reported,
        held,
    )


def add_figures(report: Report, sizes: Sizes, viewers: Sequence[SoakViewer], outcome: Outcome) -> None:
    figures = report.figures
    servers_ = range(len(outcome.phase.per_server))
    figures.update(viewers=len(viewers), viewers_per_server=[sum(v.server == s for v in viewers) for s in servers_])
    figures.update(
        write_ops=outcome.sent,
        write_ops_target=sizes.writes,
        write_phase_s=round(outcome.write_s, 1),
        write_ops_per_s=round(outcome.sent / outcome.write_s, 1) if outcome.write_s else None,
        settle_s=round(outcome.settle_s, 1),
    )
    figures["requests"] = dict(sum((w.requests for w in outcome.writers), Counter()))
    figures["operations"] = dict(sum((w.operations for w in outcome.writers), Counter()))
    figures.update(
        churning_viewers=sum(v.churns for v in viewers),
        reconnects_clean=outcome.churn.clean,
        reconnects_dropped=outcome.churn.dropped,
    )
    add_push_figures(figures, viewers, outcome.finals, outcome.phase.wall_s)
    figures["lost_final_states"] = len(outcome.lost)
    figures["active_subscriptions_reported"] = outcome.subscriptions_reported
    figures["active_subscriptions_held"] = outcome.subscriptions_held
    add_cpu_figures(report, outcome.phase, outcome.database_cpu_s, outcome.sent)


def add_failures(
    report: Report, sizes: Sizes, admins: Sequence[Conn], viewers: Sequence[SoakViewer], outcome: Outcome
) -> None:
    failures = report.failures
    failures.extend(f"lost final state: {line}" for line in outcome.lost[:EXAMPLES])
    duplicated = [
        (conn.label, sub_id, state)
        for viewer in viewers
        for conn in viewer.conns()
        for sub_id, state in conn.subs.items()
        if state.duplicates
    ]
    failures.extend(
        f"duplicate push: {label} {state.label} ({sub_id}): {state.first_duplicate}"
        for label, sub_id, state in duplicated[:EXAMPLES]
    )
    for admin in admins:
        failures.extend(admin.violations)
    for conn in (conn for viewer in viewers for conn in viewer.conns()):
        failures.extend(conn.violations)  # unexpected closes, out-of-order replies, malformed frames
        if conn.early:
            failures.append(f"{conn.label}: pushes for unknown subscriptions {sorted(conn.early)[:5]}")
    failures.extend(error for writer in outcome.writers for error in writer.errors[:EXAMPLES])
    failures.extend(outcome.churn.failures[:EXAMPLES])
    if outcome.subscriptions_reported != outcome.subscriptions_held:
        failures.append(
            f"active subscriptions per process: servers report {outcome.subscriptions_reported}, "
            f"live viewers hold {outcome.subscriptions_held}"
        )
    if not outcome.quiet:
        failures.append(f"pushes still arriving {sizes.timeout:.0f}s after the last write")
    if outcome.cut_short:
        report.notes.append(
            f"the write phase hit its bound (2 x {sizes.duration:.0f}s) after {outcome.sent} of "
            f"{sizes.writes} operations: the servers could not keep up with the pace"
        )


def add_push_figures(
    figures: dict[str, JSON], viewers: Sequence[SoakViewer], finals: dict[str, JSON], wall_s: float
) -> None:
    pushes: Counter[str] = Counter()
    duplicates = 0
    for viewer in viewers:
        for conn in viewer.conns():
            for state in conn.subs.values():
                pushes[state.label] += state.pushes
                duplicates += state.duplicates
    figures["pushes_delivered"] = sum(pushes.values())
    figures["pushes_per_s"] = round(sum(pushes.values()) / wall_s)
    figures["pushes_per_query"] = dict(sorted(pushes.items()))
    figures["push_mib"] = round(sum(c.push_bytes for v in viewers for c in v.conns()) / 2**20, 1)
    figures["duplicate_consecutive_pushes"] = duplicates
    figures["subscriptions_checked"] = sum(len(v.conn.subs) for v in viewers if v.conn)
    figures["final_sizes"] = {
        label: (value if isinstance(value, int) else len(value)) for label, value in finals.items()
    }


def add_cpu_figures(report: Report, phase: PhaseFigures, database_cpu_s: float, writes: int) -> None:
    figures = report.figures
    figures["measured_phase_s"] = round(phase.wall_s, 1)
    for i, server in enumerate(phase.per_server):
        figures[f"server{i}_cpu_s"] = round(server.cpu_s, 1)
        figures[f"server{i}_cpu_ms_per_write"] = round(server.cpu_s * 1000 / writes, 2) if writes else None
        figures[f"server{i}_cpu_cores"] = round(server.cpu_s / phase.wall_s, 2)
        figures[f"server{i}_peak_rss_mib"] = round(server.hwm_mib, 1)  # VmHWM: peak over the process's life
    figures["postgres_backends_cpu_s"] = round(database_cpu_s, 1)
    figures["client_cpu_ratio"] = round(phase.client_cpu_s / phase.wall_s, 2)
    others = max(0.0, phase.foreign_machine_s - database_cpu_s)
    figures["other_processes_cpu_s"] = round(others, 1)
    figures["other_processes_cores"] = round(others / phase.wall_s, 2)
    if phase.client_cpu_s > 0.8 * phase.wall_s:
        report.notes.append("client-bound: the client used more than 80% of a core; pushes may have queued in it")


# --------------------------------------------------------------------------- output


def print_report(report: Report, cluster: servers.Cluster, sizes: Sizes, seed: int, others: int | None) -> bool:
    ok = not report.failures
    report.figures["other_servers_on_change_group"] = others
    if others:
        report.notes.append(
            f"{others} other server processes listened on this Redis's change group: they "
            "and ours re-evaluated on each other's writes (CPU, not correctness)"
        )
    line = {
        "ok": ok,
        "sizes": asdict(sizes),
        "seed": seed,
        "server_pids": cluster.pids,
        "database": cluster.database,
        "figures": report.figures,
        "failures": report.failures,
        "notes": report.notes,
    }
    print("SOAK_JSON " + json.dumps(line, separators=(",", ":")), flush=True)
    print()
    for key, value in report.figures.items():
        print(f"  {key:<34} {value}")
    for index in range(len(cluster.pids)):
        count, tail = cluster.notable_log_lines(index, limit=10)
        print(f"  {f'server{index}_log_lines':<34} {count}" + (f" ({cluster.log_path(index)})" if count else ""))
        for text in tail:
            print(f"      {text}")
    for note in report.notes:
        print(f"  note: {note}")
    for failure in report.failures:
        print(f"  FAIL: {failure}")
    print(f"\nresult: {'all checks passed' if ok else 'FAILURES'}")
    return ok


def parse_args(argv: Sequence[str] | None = None) -> tuple[Sizes, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: finishes in under 30 s")
    parser.add_argument("--viewers", type=int)
    parser.add_argument("--writes", type=int)
    parser.add_argument("--duration", type=float, help="seconds to pace the writes over (bound: twice this)")
    parser.add_argument("--churn-rate", type=float, help="reconnects per second")
    parser.add_argument("--churn-fraction", type=float, help="share of viewers that reconnect")
    parser.add_argument("--timeout", type=float, help="bound on quiescence and final-state waits")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--redis-url", default=servers.REDIS_URL)
    parser.add_argument("--keep", action="store_true", help="keep the server logs")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    overrides = {
        name: getattr(args, name)
        for name in ("viewers", "writes", "duration", "churn_rate", "churn_fraction", "timeout")
        if getattr(args, name) is not None
    }
    return Sizes(**{**asdict(sizes), **overrides}), args


async def main(sizes: Sizes, args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    others = servers.group_listeners(args.redis_url)
    try:
        cluster = servers.Cluster(2, args.redis_url, args.keep)
        cluster.start()
    except Exception as error:
        cluster.failed = True
        cluster.stop()
        print(f"setup failed: {error}", file=sys.stderr)
        return 2
    print(
        f"servers {cluster.pids} on {','.join(cluster.urls)}, database {cluster.database}, {args.redis_url}, "
        f"seed {seed}: {sizes}",
        file=sys.stderr,
        flush=True,
    )
    ok = False
    # Every wait inside is bounded; this is the backstop should one of them not be.
    limit = 2 * sizes.duration + 3 * sizes.timeout + 300
    try:
        report = await asyncio.wait_for(soak(cluster, sizes, seed), limit)
        ok = print_report(report, cluster, sizes, seed, others)
    except (RequestFailed, OSError) as error:
        print(f"soak aborted: {error}", file=sys.stderr)
    except TimeoutError:
        print(f"soak aborted: still running after {limit:.0f}s", file=sys.stderr)
    finally:
        cluster.failed = not ok
        cluster.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sizes_, args_ = parse_args()
    servers.raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main(sizes_, args_)))
    sys.exit(uvloop.run(main(sizes_, args_)))
