"""The server's Prometheus metrics, defined in one place.

Other packages call into this module; it imports nothing of theirs. Counts
that already exist on live objects (connections, subscriptions, live
queries, queued outbox bytes) are not counted twice: a reader registered with
`set_state_reader` is asked for them when `/metrics` is scraped. Counters on
hot paths are plain, label-free objects bound here once, and the fan-out
adds to them once per evaluation round, not once per viewer.

With several worker processes, set `PROMETHEUS_MULTIPROC_DIR` (an empty
directory, wiped before each start): counters and histograms are then
summed over the workers by prometheus-client's multiprocess mode, and the
state gauges are written by each process every `STATE_PUBLISH_SECONDS`
(`livesum`: the sum over processes still alive). docs/operations.md has
the details and limits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "dashboard"

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
if MULTIPROCESS:
    # Created if missing; emptying it before a start is the deployment's job
    # (the files of a previous run would be summed in).
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- counters and histograms (any process mode) ----------------------------------

LOGINS = Counter(f"{PREFIX}_logins", "Successful auth.login requests")
LOGIN_FAILURES = Counter(
    f"{PREFIX}_login_failures", "Failed auth.login requests (unknown or expired token, rate limited)"
)
# Rounds take from well under a millisecond (one small query) to seconds
# (thousands of records re-read); pushes should stay within tens of ms.
EVALUATION_SECONDS = Histogram(
    f"{PREFIX}_evaluation_seconds",
    "Duration of one fan-out round's evaluations (every live query a change made stale, one database hop)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PUSH_LATENCY_SECONDS = Histogram(
    f"{PREFIX}_push_latency_seconds",
    "From a committed change reaching this process's hub to its pushes being handed to the connections",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PUSHES = Counter(f"{PREFIX}_pushes", "Push frames handed to connections")
PUSH_BYTES = Counter(
    f"{PREFIX}_push_bytes", "Bytes of push frames handed to connections (frame text, without WebSocket framing)"
)
COALESCED_PUSHES = Counter(
    f"{PREFIX}_coalesced_pushes", "Pushes waiting for a slow reader that a newer result replaced before they were sent"
)
SLOW_CONSUMER_CLOSES = Counter(
    f"{PREFIX}_slow_consumer_closes",
    "Connections closed with 1008 slow_consumer (outbox over its connection, user or process budget)",
)
LAYER_PROBE_FAILURES = Counter(
    f"{PREFIX}_layer_probe_failures", "Channel-layer probes that could not be sent or did not come back in time"
)
WRITE_TRANSACTIONS = Counter(
    f"{PREFIX}_write_transactions",
    "Committed changes published by this process (a transaction is one); rate() gives writes per second",
)
WRITTEN_RECORDS = Counter(
    f"{PREFIX}_written_records", "Records inserted, updated or deleted in committed changes (a bucket clear counts one)"
)

# --- HTTP ingest -------------------------------------------------------------------

# The endpoints of issue 16's HTTP ingest; a fixed set, so the label cannot grow.
INGEST_ENDPOINTS = ("/api/metrics", "/api/v2/write", "/v1/metrics")
INGEST_REQUESTS = Counter(
    f"{PREFIX}_ingest_requests",
    "HTTP ingest requests by endpoint and result (the HTTP status code answered)",
    ["endpoint", "result"],
)


def ingest_request(endpoint: str, status: int) -> None:
    """Counts one HTTP ingest request: `endpoint` one of INGEST_ENDPOINTS,
    `status` the HTTP status code it was answered with (becomes the `result`
    label, e.g. "200", "400", "401", "403", "413")."""
    if endpoint not in INGEST_ENDPOINTS:
        raise ValueError(f"unknown ingest endpoint {endpoint!r} (known: {', '.join(INGEST_ENDPOINTS)})")
    if not 100 <= status <= 599:
        raise ValueError(f"not an HTTP status code: {status!r}")
    INGEST_REQUESTS.labels(endpoint, str(status)).inc()


def note_round(evaluation_seconds: float, latency_seconds: float | None, pushes: int, push_bytes: int) -> None:
    """One fan-out round: its evaluation time, and the pushes it handed out."""
    EVALUATION_SECONDS.observe(evaluation_seconds)
    if pushes:
        PUSHES.inc(pushes)
        PUSH_BYTES.inc(push_bytes)
        if latency_seconds is not None:
            PUSH_LATENCY_SECONDS.observe(latency_seconds)


def note_change(changes: dict[str, list[str] | None]) -> None:
    """One committed change (`{bucket: [keys] or None for a clear}`)."""
    WRITE_TRANSACTIONS.inc()
    WRITTEN_RECORDS.inc(sum(1 if keys is None else len(keys) for keys in changes.values()))


# --- state read at scrape time -------------------------------------------------------


@dataclass
class State:
    """What the process holds right now (summed over its hubs)."""

    connections_unauthenticated: int = 0
    connections_authenticated: int = 0
    subscriptions: int = 0
    live_queries: int = 0
    outbox_bytes: int = 0
    layer_healthy: int = 1


StateReader = Callable[[], State]
_reader: list[StateReader] = []

CONNECTIONS = f"{PREFIX}_connections"
STATE_HELP = {
    "subscriptions": "Active subscriptions",
    "live_queries": "Distinct live queries (query and params) evaluated after each change of their buckets",
    "outbox_bytes": "Bytes of frames waiting in connections' outboxes for slow readers",
    "layer_healthy": "1 while this process's channel-layer probes come back, 0 during an outage",
}
CONNECTIONS_HELP = "Open WebSocket connections by state (unauthenticated: no session yet or any more)"


def set_state_reader(reader: StateReader) -> None:
    """Registers the function that reads the process's state (one: the last wins)."""
    _reader[:] = [reader]


def read_state() -> State:
    return _reader[0]() if _reader else State()


class StateCollector(Collector):
    """Gauges computed when scraped, from the registered state reader."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = read_state()
        connections = GaugeMetricFamily(CONNECTIONS, CONNECTIONS_HELP, labels=["state"])
        connections.add_metric(["unauthenticated"], state.connections_unauthenticated)
        connections.add_metric(["authenticated"], state.connections_authenticated)
        yield connections
        for name, text in STATE_HELP.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=getattr(state, name))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering must not call the reader (it may not be set yet).
        return iter(())


# --- multiprocess mode ----------------------------------------------------------------

STATE_PUBLISH_SECONDS = 2.0

if MULTIPROCESS:
    # A scrape reaches one worker, which cannot see the others' memory: each
    # process writes its state into the shared directory instead.
    _CONNECTION_GAUGE = Gauge(CONNECTIONS, CONNECTIONS_HELP, ["state"], multiprocess_mode="livesum")
    _STATE_GAUGES = {
        name: Gauge(f"{PREFIX}_{name}", text, multiprocess_mode="livesum") for name, text in STATE_HELP.items()
    }
else:
    REGISTRY.register(StateCollector())


def publish_state(state: State) -> None:
    """Multiprocess mode: writes this process's state for the next scrape."""
    if not MULTIPROCESS:
        return
    _CONNECTION_GAUGE.labels("unauthenticated").set(state.connections_unauthenticated)
    _CONNECTION_GAUGE.labels("authenticated").set(state.connections_authenticated)
    for name, gauge in _STATE_GAUGES.items():
        gauge.set(getattr(state, name))


def tasks() -> list[asyncio.Task]:
    """The tasks a server process's event loop runs for telemetry (none
    unless in multiprocess mode); the caller owns them."""
    if not MULTIPROCESS:
        return []
    return [asyncio.create_task(_publish_forever(), name="telemetry-publish-state")]


async def _publish_forever() -> None:
    while True:
        publish_state(read_state())
        await asyncio.sleep(STATE_PUBLISH_SECONDS)
