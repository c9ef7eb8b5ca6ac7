"""Benchmark load client for the dashboard server: scenarios S1-S4 over the WebSocket protocol, with correctness checks.

It runs in its own process and speaks only the wire protocol (docs/protocol.md: JSON text frames,
numbered requests, pushes), with no Django imports, so it sees the server as any client does.

    .venv/bin/python bench/loadclient.py --url ws://127.0.0.1:8000/ws/ --server-pid PID
    bench/run.sh uvicorn S1,S2,S3,S4 --smoke      # fresh server on core 0, this client on core 1
    bench/run_multi.sh S2 --viewers 2000           # two server processes on PostgreSQL + Redis

With --urls URL1,URL2 (and --server-pids PID1,PID2) the viewers are spread round-robin over
several server processes and the admin writes through the first; CPU and RSS are then also
reported per process (server0_..., server1_...).

Scenarios (default sizes; --smoke shrinks them to a CI-sized correctness check):
  S1 latency  10 viewers x {all-metrics, metrics-by-name cpu, metric-count, latest-metrics 10};
              200 inserts, each waited for.  Insert and push latency, server CPU per insert.
  S2 fan-out  1,000 viewers (--viewers) on metric-count; 100 inserts paced at 20/s.
              Push latency, server CPU per insert, server peak RSS.
  S3 ingest   50 viewers on metric-count + latest-metrics 10; 2,000 inserts, 32 in flight on one
              connection.  Acknowledged inserts/s, lag of the viewers' final count after the last result.
  S4 large    10,000 preloaded metrics, 10 viewers on all-metrics; 20 inserts, each waited
              for by the admin and by every viewer.  Push latency, bytes per push, CPU.

Correctness, per run: every viewer ends on the final result, never receives the same result
twice in a row, never receives a stale (smaller) result, and receives no more pushes than there
were changes.  Fewer pushes than changes are reported as "coalesced", which the protocol's
latest-state rule allows.  Replies must come in request order.  Exit status 1 if any check failed.

Push latency runs from just before the insert is sent to the arrival of the viewer's push whose
result first reflects it.  Viewer frames are timestamped on arrival and parsed only when the
stream is quiet, so parsing never delays the timestamps of frames still arriving.  Server CPU
comes from /proc/PID/stat (10 ms ticks: small runs give coarse per-insert figures).  The client
offers no permessage-deflate, so the figures are the server's own work, not zlib's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

JSON = Any
T = TypeVar("T")

BUCKET = "metrics"
ADMIN_TOKEN = "admin-token"
VIEWER_TOKEN = "viewer-token"
NAMES = ("cpu", "memory", "disk", "network")
CONNECT_CONCURRENCY = 50
WELCOME_TIMEOUT_S = 15.0
REPLY_TIMEOUT_S = 120.0
# A stream counts as quiet after this long without a new frame; only then are frames parsed.
QUIET_S = 0.15
# How long viewers keep listening after the final state, to catch pushes that must not exist.
LINGER_S = 0.3
# Time between subscribing and the first write: any push arriving then is spurious.
SETTLE_S = 0.3
CLIENT_BOUND_RATIO = 0.8
# Other processes' CPU on a pinned core above this share of a phase means the run was disturbed.
CONTENDED_RATIO = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")

QuerySpec = tuple[str, dict[str, JSON] | None]
ALL_METRICS: QuerySpec = ("all-metrics", None)
CPU_METRICS: QuerySpec = ("metrics-by-name", {"name": "cpu"})
METRIC_COUNT: QuerySpec = ("metric-count", None)
LATEST_10: QuerySpec = ("latest-metrics", {"n": 10})


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    s1_viewers: int = 10
    s1_inserts: int = 200
    s2_viewers: int = 1000
    s2_inserts: int = 100
    s2_rate: float = 20.0
    s3_viewers: int = 50
    s3_inserts: int = 2000
    s3_window: int = 32
    s4_preload: int = 10_000
    s4_batch: int = 500
    s4_viewers: int = 10
    s4_inserts: int = 20


SMOKE_SIZES = Sizes(
    s1_viewers=2,
    s1_inserts=10,
    s2_viewers=20,
    s2_inserts=10,
    s3_viewers=5,
    s3_inserts=100,
    s4_preload=500,
    s4_viewers=2,
    s4_inserts=3,
)


# --------------------------------------------------------------------------- server process


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/PID/stat (the command name may hold spaces, so split after its ')')."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()


def _every_stat() -> dict[int, list[str]]:
    """The /proc/PID/stat fields (3..) of every live process."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stats[int(entry)] = _stat_fields(int(entry))
            except OSError:
                continue  # it exited meanwhile
    return stats


def process_tree(pid: int) -> list[int]:
    """PID and its live descendants (a server started with workers forks children)."""
    children: dict[int, list[int]] = {}
    for child, fields in _every_stat().items():
        children.setdefault(int(fields[1]), []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of the processes, including their reaped children."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue  # a worker that exited; its time moved to its parent's cutime
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def status_kib(pids: Sequence[int], key: str) -> int:
    """Sum of one /proc/PID/status memory line (VmRSS, VmHWM) over the processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def core_busy_seconds(core: int | None) -> float:
    """Busy time of one CPU so far (None: of all CPUs together), from /proc/stat
    (user nice system irq softirq steal)."""
    name = "cpu" if core is None else f"cpu{core}"
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == name:
                return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) / CLK_TCK
    return 0.0


def pinned_core(pid: int) -> int | None:
    """The one CPU the process may run on, or None when it is not pinned to one."""
    try:
        cores = os.sched_getaffinity(pid)
    except OSError:
        return None
    return next(iter(cores)) if len(cores) == 1 else None


def busy_processes(exclude: set[int], window_s: float = 1.0, share: float = 0.02) -> list[str]:
    """Processes other than `exclude` that used at least `share` of a core
    over `window_s`, as "pid name NN%". The per-phase contention figures only
    see CPU on the pinned cores while a phase runs, which a development server
    polling its files now and then escapes; a busy machine still moves the
    figures (memory bandwidth, caches, timer wakeups), so it is named here."""

    def ticks() -> dict[int, int]:  # utime + stime
        return {pid: int(fields[11]) + int(fields[12]) for pid, fields in _every_stat().items() if pid not in exclude}

    before = ticks()
    time.sleep(window_s)
    busy = []
    for pid, now in sorted(ticks().items()):
        used = (now - before.get(pid, now)) / CLK_TCK / window_s
        if used >= share:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())[:60]
            except OSError:
                command = ""
            busy.append(f"{pid} {command or '?'} {used:.0%}")
    return busy


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ServerFigures:
    """One server process (with its children) over a phase."""

    cpu_s: float
    peak_rss_mib: float
    hwm_mib: float


@dataclass
class PhaseFigures:
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    server_peak_rss_mib: float | None
    server_hwm_mib: float | None
    # CPU used on the server's and the client's pinned cores by other processes: load from
    # elsewhere that delays the benchmark and inflates its latencies.
    foreign_server_core_s: float | None
    foreign_client_core_s: float | None
    # CPU used on all cores by anything but the servers and this client (the database, Redis,
    # other users): the only contention figure when nothing is pinned.
    foreign_machine_s: float = 0.0
    per_server: list[ServerFigures] = field(default_factory=list)

    @property
    def client_bound(self) -> bool:
        return self.wall_s > 0 and self.client_cpu_s > CLIENT_BOUND_RATIO * self.wall_s


class PhaseMeter:
    """Wall time, client CPU, server CPU and server peak RSS over one measured phase.

    With several server processes, the totals cover all of them and `per_server` has each one.
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self.trees = [process_tree(pid) for pid in server_pids]
        self.pids = [pid for tree in self.trees for pid in tree]
        # Per-core contention needs the one core that every server is pinned to.
        cores = {pinned_core(pid) for pid in server_pids}
        self.server_core = cores.pop() if len(cores) == 1 else None
        self.client_core = pinned_core(0)
        self._peak_kib = 0
        self._peaks_kib = [0] * len(self.trees)
        self._poller: asyncio.Task[None] | None = None

    def start(self) -> None:
        # The client's own full garbage collections (its heap holds every
        # viewer's connection) would stall its reading for tens of ms and be
        # measured as push latency: collect now, and not during the phase.
        gc.collect()
        gc.disable()
        self._t0 = time.perf_counter()
        self._client0 = client_cpu_seconds()
        self._servers0 = [cpu_seconds(tree) for tree in self.trees]
        self._sample_rss()
        self._busy0 = {core: core_busy_seconds(core) for core in self._cores()}
        self._machine0 = core_busy_seconds(None)
        if self.pids:
            self._poller = asyncio.create_task(self._poll_rss())

    def _sample_rss(self) -> None:
        each = [status_kib(tree, "VmRSS") for tree in self.trees]
        self._peaks_kib = [max(peak, now) for peak, now in zip(self._peaks_kib, each, strict=True)]
        self._peak_kib = max(self._peak_kib, sum(each))

    async def _poll_rss(self) -> None:
        # VmHWM covers the process's whole life; polling gives the peak of this phase.
        while True:
            await asyncio.sleep(0.05)
            self._sample_rss()

    def _cores(self) -> set[int]:
        return {core for core in (self.server_core, self.client_core) if core is not None}

    def _foreign(self, core: int | None, server_cpu: float, client_cpu: float) -> float | None:
        if core is None:
            return None
        ours = (server_cpu if core == self.server_core else 0.0) + (client_cpu if core == self.client_core else 0.0)
        return max(0.0, core_busy_seconds(core) - self._busy0[core] - ours)

    def snapshot(self) -> PhaseFigures:
        has_server = bool(self.pids)
        client_cpu = client_cpu_seconds() - self._client0
        per_server = [
            ServerFigures(cpu_seconds(tree) - cpu0, peak / 1024, status_kib(tree, "VmHWM") / 1024)
            for tree, cpu0, peak in zip(self.trees, self._servers0, self._peaks_kib, strict=True)
        ]
        server_cpu = sum(server.cpu_s for server in per_server)
        machine = core_busy_seconds(None) - self._machine0
        return PhaseFigures(
            wall_s=time.perf_counter() - self._t0,
            client_cpu_s=client_cpu,
            server_cpu_s=server_cpu if has_server else None,
            server_peak_rss_mib=self._peak_kib / 1024 if has_server else None,
            server_hwm_mib=status_kib(self.pids, "VmHWM") / 1024 if has_server else None,
            foreign_server_core_s=self._foreign(self.server_core, server_cpu, client_cpu),
            foreign_client_core_s=self._foreign(self.client_core, server_cpu, client_cpu),
            foreign_machine_s=max(0.0, machine - server_cpu - client_cpu),
            per_server=per_server,
        )

    def stop(self) -> None:
        gc.enable()
        if self._poller:
            self._poller.cancel()


# --------------------------------------------------------------------------- connection


class RequestFailed(Exception):
    """A request got an error frame, no reply, or a malformed result."""


def brief(value: JSON, limit: int = 300) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def looks_like_ping(raw: bytes) -> bool:
    # Pings must be answered even while frames are recorded unparsed; they are tiny.
    return len(raw) < 128 and b'"ping"' in raw


@dataclass
class Push:
    t: float
    sub_id: str
    data: JSON
    nbytes: int  # payload bytes of the frame


@dataclass
class Pending:
    request: dict[str, JSON]
    t_sent: float
    future: asyncio.Future[tuple[float, dict[str, JSON]]]


class Conn(asyncio.Protocol):
    """One WebSocket connection: numbered requests, replies matched by id, pushes recorded.

    websockets' sans-I/O protocol does the handshake and the framing; this asyncio protocol
    feeds it the bytes as they arrive, so a frame costs one callback instead of a task switch
    and a future.  (With 1,000 viewers, the library's asyncio connection layer cost the client
    about 25 us per push, more than a good server spends sending one, and push latencies
    then measured the client.)  With `lazy` set, frames are timestamped and kept as bytes
    until `drain()`.
    """

    def __init__(self, url: str, origin: str | None, label: str) -> None:
        self.label = label
        self.lazy = False
        self.raw: list[tuple[float, bytes]] = []
        self.pushes: list[Push] = []
        self.violations: list[str] = []
        self.close_reason = ""
        self.pings = 0
        self._ws = ClientProtocol(parse_uri(url), origin=Origin(origin) if origin else None, max_size=None)
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._binary = False
        self._pending: dict[int, Pending] = {}
        self._next_id = 1
        self._closing = False
        self._abort_timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._welcome: asyncio.Future[dict[str, JSON]] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._arrival = asyncio.Event()

    @classmethod
    async def open(cls, url: str, origin: str | None, label: str) -> Conn:
        """Connect, complete the handshake and receive the welcome frame."""
        uri = parse_uri(url)
        conn = cls(url, origin, label)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: conn, uri.host, uri.port, ssl=uri.secure or None), WELCOME_TIMEOUT_S
            )
            await asyncio.wait_for(asyncio.shield(conn._opened), WELCOME_TIMEOUT_S)
            welcome = await asyncio.wait_for(asyncio.shield(conn._welcome), WELCOME_TIMEOUT_S)
        except TimeoutError:
            conn.abort()
            raise RequestFailed(f"{label}: no handshake or welcome within {WELCOME_TIMEOUT_S}s") from None
        except BaseException:
            conn.abort()
            raise
        if welcome.get("requiresAuth") is not True or not isinstance(welcome.get("serverTime"), (int, float)):
            conn.violations.append(f"{label}: unexpected welcome {brief(welcome)}")
        return conn

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()  # every frame in this chunk arrived now
        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Frame):
                self._frame(t, event)
            elif not isinstance(event, Response):
                self.violations.append(f"{self.label}: unexpected handshake event {event!r}")
            elif self._ws.handshake_exc is not None:
                self._opened.set_exception(
                    RequestFailed(f"{self.label}: handshake refused: HTTP {event.status_code} {event.reason_phrase}")
                )
            else:
                self._opened.set_result(None)
        self._flush()

    def eof_received(self) -> None:
        self._ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer:
            self._abort_timer.cancel()
        reason = self.close_reason or f"TCP connection lost without a close frame ({exc or 'EOF'})"
        if not self._closing:
            self.violations.append(f"{self.label}: server closed the connection: {reason}")
        failure = RequestFailed(f"{self.label}: {reason}")
        futures: list[asyncio.Future[Any]] = [p.future for p in self._pending.values()]
        for future in [*futures, self._opened, self._welcome]:
            if not future.done():
                future.set_exception(failure)
                future.exception()  # mark retrieved: nobody may be waiting any more
        self._pending.clear()
        self._lost.set_result(None)
        self._arrival.set()

    # frames

    def _frame(self, t: float, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            if frame.opcode is not Opcode.CONT:
                self._binary = frame.opcode is Opcode.BINARY
            self._fragments.append(bytes(frame.data))  # no copy: it already is bytes
            if frame.fin:
                payload = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
                self._fragments = []
                self._message(t, payload)
        elif frame.opcode is Opcode.CLOSE:
            received = self._ws.close_rcvd  # close_code stays None until the TCP close
            code, reason = (received.code, received.reason) if received else (None, None)
            self.close_reason = f"close frame code {code} reason {reason!r}"
        # WebSocket-level pings are answered by the sans-I/O protocol itself.

    def _message(self, t: float, payload: bytes) -> None:
        if self._binary:
            self.violations.append(f"{self.label}: binary frame of {len(payload)} bytes")
        elif self.lazy and not looks_like_ping(payload):
            self.raw.append((t, payload))
            self._arrival.set()
        else:
            self._handle(t, payload)

    def _handle(self, t: float, raw: bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            self.violations.append(f"{self.label}: frame is not JSON text: {brief(raw)}")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not self._welcome.done():
            if kind == "welcome":
                self._welcome.set_result(frame)
                return
            self.violations.append(f"{self.label}: first frame is not a welcome: {brief(raw)}")
        if kind == "push":
            self.on_push(t, frame, len(raw))
        elif kind in ("result", "error"):
            self._resolve(t, frame)
        elif kind == "ping":
            self.pings += 1
            if self._ws.state is State.OPEN:
                self._send_text(json.dumps({"type": "pong", "timestamp": frame.get("timestamp")}))
        elif kind != "system":  # shutdown notices are allowed; anything else is not in the protocol
            self.violations.append(f"{self.label}: unexpected frame {brief(raw)}")

    def on_push(self, t: float, frame: dict[str, JSON], nbytes: int) -> None:
        """Record a push frame (a subclass may keep less: bench/soak.py keeps only the last result)."""
        self.pushes.append(Push(t, frame.get("subscriptionId"), frame.get("data"), nbytes))

    def _resolve(self, t: float, frame: dict[str, JSON]) -> None:
        frame_id = frame.get("id")
        if not isinstance(frame_id, (int, float)) or isinstance(frame_id, bool):
            self.violations.append(f"{self.label}: reply without a numeric id: {brief(frame)}")
            return
        pending = self._pending.pop(frame_id, None)  # type: ignore[arg-type]  # 1.0 finds key 1
        if pending is None:
            self.violations.append(f"{self.label}: reply to no outstanding request: {brief(frame)}")
            return
        oldest = next(iter(self._pending), None)
        if oldest is not None and oldest < frame_id:
            self.violations.append(f"{self.label}: reply to id {frame_id} arrived before the reply to id {oldest}")
        pending.future.set_result((t, frame))

    def drain(self) -> None:
        """Parse the frames recorded raw, keeping their arrival times."""
        raw, self.raw = self.raw, []
        for t, message in raw:
            self._handle(t, message)

    async def wait_raw(self, count: int, timeout: float) -> None:
        """Wait until at least `count` raw frames are recorded (lazy mode)."""
        deadline = time.perf_counter() + timeout
        while len(self.raw) < count and not self._lost.done():
            self._arrival.clear()
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise RequestFailed(f"{self.label}: push did not arrive within {timeout}s")
            with contextlib.suppress(TimeoutError):  # the loop re-checks the count and the deadline
                await asyncio.wait_for(self._arrival.wait(), remaining)

    # requests

    def send(self, op: str, **fields: JSON) -> Pending:
        if self._ws.state is not State.OPEN:
            raise RequestFailed(f"{self.label}: cannot send {op}: {self.close_reason or 'connection not open'}")
        request: dict[str, JSON] = {"id": self._next_id, "type": op, **fields}
        self._next_id += 1
        pending = Pending(request, time.perf_counter(), asyncio.get_running_loop().create_future())
        self._pending[request["id"]] = pending
        self._send_text(json.dumps(request, separators=(",", ":")))
        return pending

    async def reply(self, pending: Pending, timeout: float = REPLY_TIMEOUT_S) -> tuple[float, dict[str, JSON]]:
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout)
        except TimeoutError:
            raise RequestFailed(f"{self.label}: no reply within {timeout}s to {brief(pending.request)}") from None

    async def call(self, op: str, **fields: JSON) -> JSON:
        pending = self.send(op, **fields)
        _, frame = await self.reply(pending)
        return result_data(self.label, pending, frame)

    def _send_text(self, text: str) -> None:
        self._ws.send_text(text.encode())
        self._flush()

    def _flush(self) -> None:
        assert self._transport is not None
        for chunk in self._ws.data_to_send():
            if chunk:
                self._transport.write(chunk)
            elif self._transport.can_write_eof():
                self._transport.write_eof()  # the protocol's signal to half-close
        if self._ws.close_expected() and self._abort_timer is None:
            # The server should now close TCP; don't wait for it forever.
            self._abort_timer = asyncio.get_running_loop().call_later(5, self.abort)

    # closing

    async def close(self) -> None:
        """Close with 1000 and wait for the server to close TCP."""
        self._closing = True
        if self._transport is None or self._lost.done():
            return
        if self._ws.state is State.OPEN:
            self._ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
        else:
            self.abort()
        await self._lost

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


def result_data(label: str, pending: Pending, frame: dict[str, JSON]) -> JSON:
    if frame.get("type") != "result" or "data" not in frame:
        raise RequestFailed(f"{label}: sent {brief(pending.request)} got {brief(frame)}")
    return frame["data"]


# --------------------------------------------------------------------------- clients


@dataclass
class Subscription:
    label: str
    initial: JSON


@dataclass
class Viewer:
    conn: Conn
    subs: dict[str, Subscription] = field(default_factory=dict)  # by subscription id

    def pushes(self, label: str) -> list[Push]:
        ids = {sub_id for sub_id, sub in self.subs.items() if sub.label == label}
        return [push for push in self.conn.pushes if push.sub_id in ids]

    def state(self, label: str) -> JSON:
        """The last result this viewer holds for the query."""
        sub = next(sub for sub in self.subs.values() if sub.label == label)
        pushes = self.pushes(label)
        return pushes[-1].data if pushes else sub.initial


def spec_label(spec: QuerySpec) -> str:
    query, params = spec
    return query if params is None else query + json.dumps(params, separators=(",", ":"))


async def bounded_gather(factories: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T | BaseException]:
    gate = asyncio.Semaphore(limit)

    async def run(factory: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await factory()

    return await asyncio.gather(*(run(factory) for factory in factories), return_exceptions=True)


async def open_admin(ctx: Context) -> Conn:
    """The admin connects to the first server."""
    conn = await Conn.open(ctx.urls[0], ctx.origins[0], "admin")
    await conn.call("auth.login", token=ADMIN_TOKEN)
    return conn


async def open_viewer(ctx: Context, index: int, specs: Sequence[QuerySpec]) -> Viewer:
    """Viewers are spread over the servers round-robin."""
    server = index % len(ctx.urls)
    label = f"viewer {index}" if len(ctx.urls) == 1 else f"viewer {index}@server{server}"
    viewer = Viewer(await Conn.open(ctx.urls[server], ctx.origins[server], label))
    try:
        await viewer.conn.call("auth.login", token=VIEWER_TOKEN)
        for spec in specs:
            query, params = spec
            fields = {"query": query} if params is None else {"query": query, "params": params}
            data = await viewer.conn.call("store.subscribe", **fields)
            if not isinstance(data, dict) or not isinstance(data.get("subscriptionId"), str) or "data" not in data:
                raise RequestFailed(f"viewer {index}: malformed subscribe result {brief(data)}")
            viewer.subs[data["subscriptionId"]] = Subscription(spec_label(spec), data["data"])
    except BaseException:
        await viewer.conn.close()
        raise
    return viewer


async def open_viewers(ctx: Context, count: int, specs: Sequence[QuerySpec]) -> list[Viewer]:
    """Connect, log in and subscribe `count` viewers, a bounded number at a time."""
    factories = [lambda i=i: open_viewer(ctx, i, specs) for i in range(count)]
    outcomes = await bounded_gather(factories, CONNECT_CONCURRENCY)
    viewers = [outcome for outcome in outcomes if isinstance(outcome, Viewer)]
    errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if errors:
        await close_all([viewer.conn for viewer in viewers])
        raise RequestFailed(f"{len(errors)} of {count} viewers failed to set up; first: {errors[0]!r}")
    return viewers


async def close_all(conns: Sequence[Conn]) -> None:
    await bounded_gather([conn.close for conn in conns], CONNECT_CONCURRENCY)


def metric(i: int) -> dict[str, JSON]:
    return {
        "name": NAMES[i % len(NAMES)],
        "value": float(i % 100) + 0.5,
        "unit": "%",
        "timestamp": 1_700_000_000_000 + i * 1000,
    }


def inserted_id(label: str, record: JSON, sent: dict[str, JSON]) -> str:
    """The key of an inserted record, after checking the record is the one sent."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise RequestFailed(f"{label}: insert result without a string id: {brief(record)}")
    if any(record.get(name) != value for name, value in sent.items()) or record.get("_version") != 1:
        raise RequestFailed(f"{label}: insert of {brief(sent)} returned {brief(record)}")
    return record["id"]


async def reset_bucket(admin: Conn) -> None:
    cleared = await admin.call("store.clear", bucket=BUCKET)
    if cleared != {"cleared": True}:
        raise RequestFailed(f"admin: store.clear returned {brief(cleared)}")
    # Give the server time to deliver the clear's pushes to any subscriber from an earlier run.
    await asyncio.sleep(0.2)


async def settle(viewers: Sequence[Viewer], lazy: bool = True) -> None:
    """Let spurious pushes (nothing is written now) arrive, then record frames raw."""
    await asyncio.sleep(SETTLE_S)
    for viewer in viewers:
        viewer.conn.lazy = lazy


async def await_final(
    viewers: Sequence[Viewer], is_final: Callable[[Viewer], bool], meter: PhaseMeter, timeout: float
) -> tuple[bool, PhaseFigures]:
    """Wait until every viewer holds its final state; return the phase figures at that moment.

    Frames are parsed only once the streams are quiet, so parsing cannot delay the arrival
    timestamps of frames still coming in.
    """
    deadline = time.perf_counter() + timeout
    seen = -1
    while True:
        await asyncio.sleep(QUIET_S)
        arrived = sum(len(viewer.conn.raw) for viewer in viewers)
        figures = meter.snapshot()
        expired = time.perf_counter() > deadline
        if arrived == seen or expired:
            for viewer in viewers:
                viewer.conn.drain()
            if all(is_final(viewer) for viewer in viewers):
                return True, figures
            if expired:
                return False, figures
            arrived = 0
        seen = arrived


async def linger(viewers: Sequence[Viewer]) -> None:
    await asyncio.sleep(LINGER_S)
    for viewer in viewers:
        viewer.conn.drain()


# --------------------------------------------------------------------------- checks


def normalize(data: JSON) -> JSON:
    """Counts stay numbers; record lists become their keys, which is what identity needs."""
    if isinstance(data, list):
        return [record.get("id") if isinstance(record, dict) else record for record in data]
    return data


def size(data: JSON) -> int | None:
    if isinstance(data, bool):
        return None
    if isinstance(data, (int, float)):
        return int(data)
    return len(data) if isinstance(data, list) else None


def describe(data: JSON) -> str:
    if isinstance(data, list):
        return f"list of {len(data)} ending {brief(normalize(data)[-2:], 120)}"
    return brief(data, 120)


def expected_finals(
    ids: Sequence[str], names: Sequence[str], new: int, specs: Sequence[QuerySpec]
) -> dict[str, tuple[JSON, int]]:
    """For each query: its expected final (normalized) result and the number of changes the
    last `new` inserts made to it, i.e. the pushes it gets when nothing is coalesced."""
    old = len(ids) - new
    cpu_ids = [key for key, name in zip(ids, names, strict=True) if name == "cpu"]
    table: dict[str, tuple[JSON, int]] = {
        spec_label(ALL_METRICS): (list(ids), new),
        spec_label(CPU_METRICS): (cpu_ids, sum(1 for name in names[old:] if name == "cpu")),
        spec_label(METRIC_COUNT): (len(ids), new),
        spec_label(LATEST_10): (list(ids[-10:]), new),
    }
    return {spec_label(spec): table[spec_label(spec)] for spec in specs}


def check_viewers(
    viewers: Sequence[Viewer], initial: dict[str, JSON], finals: dict[str, tuple[JSON, int]]
) -> tuple[list[str], list[str], dict[str, int]]:
    """Apply the latest-state rules to every subscription; return failures, notes and pushes per query."""
    failures: list[str] = []
    notes: list[str] = []
    received: dict[str, int] = {}
    for viewer in viewers:
        failures.extend(viewer.conn.violations)
        known = set(viewer.subs)
        strays = [push for push in viewer.conn.pushes if push.sub_id not in known]
        if strays:
            failures.append(
                f"{viewer.conn.label}: {len(strays)} pushes for unknown subscriptions, first {brief(strays[0].sub_id)}"
            )
        for sub_id, sub in viewer.subs.items():
            where = f"{viewer.conn.label} {sub.label} ({sub_id})"
            final, changes = finals[sub.label]
            pushes = [push for push in viewer.conn.pushes if push.sub_id == sub_id]
            received[sub.label] = received.get(sub.label, 0) + len(pushes)
            failures.extend(check_sequence(where, sub, pushes, initial[sub.label], final, changes))
    for label, (_, changes) in finals.items():
        expected = changes * len(viewers)
        got = received.get(label, 0)
        if got < expected:
            notes.append(f"{label}: {got} of {expected} pushes (coalesced {expected - got})")
    return failures, notes, received


def check_sequence(
    where: str, sub: Subscription, pushes: Sequence[Push], initial: JSON, final: JSON, changes: int
) -> list[str]:
    failures = []
    if normalize(sub.initial) != initial:
        failures.append(f"{where}: initial result {describe(sub.initial)}, expected {describe(initial)}")
    grows = not sub.label.startswith("latest-metrics")  # only inserts happen, so these only grow
    previous = sub.initial
    for index, push in enumerate(pushes, 1):
        if push.data == previous:
            failures.append(f"{where}: push #{index} repeats the previous result {describe(push.data)}")
        elif grows and (size(push.data) or 0) <= (size(previous) or 0):
            failures.append(f"{where}: push #{index} is stale: {describe(push.data)} after {describe(previous)}")
        previous = push.data
    if normalize(previous) != final:
        failures.append(f"{where}: missing final state: holds {describe(previous)}, expected {describe(final)}")
    if len(pushes) > changes:
        failures.append(f"{where}: {len(pushes)} pushes for {changes} changes")
    return failures


def push_latencies(viewers: Sequence[Viewer], label: str, base: int, sends: Sequence[float]) -> list[float]:
    """Seconds from sending insert k to each viewer's first push whose size reflects it."""
    samples = []
    for viewer in viewers:
        seen: set[int] = set()
        for push in viewer.pushes(label):
            n = size(push.data)
            k = -1 if n is None else n - base - 1
            if 0 <= k < len(sends) and k not in seen:
                seen.add(k)
                samples.append(push.t - sends[k])
    return samples


def reflect_latencies(viewers: Sequence[Viewer], label: str, base: int, sends: Sequence[float]) -> list[float]:
    """Seconds from sending insert k to each viewer's first push that includes it, even when that
    push also includes later inserts: what a user waits for, coalescing included."""
    samples = []
    for viewer in viewers:
        covered = 0
        for push in viewer.pushes(label):
            n = size(push.data)
            reached = 0 if n is None else min(n - base, len(sends))
            while covered < reached:
                samples.append(push.t - sends[covered])
                covered += 1
    return samples


def percentile(samples: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


# --------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    urls: list[str]  # one per server process; viewers round-robin, the admin on the first
    origins: list[str | None]
    server_pids: list[int]
    sizes: Sizes
    timeout: float
    # Other processes that used CPU just before the runs (see busy_processes).
    busy_before: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    scenario: str
    figures: dict[str, JSON] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    client_bound: bool = False

    def add_phase(self, phase: PhaseFigures, inserts: int) -> None:
        self.figures.update(
            phase_s=round(phase.wall_s, 3),
            client_cpu_s=round(phase.client_cpu_s, 3),
            client_cpu_ratio=round(phase.client_cpu_s / phase.wall_s, 3) if phase.wall_s else None,
            server_cpu_s=None if phase.server_cpu_s is None else round(phase.server_cpu_s, 3),
            server_cpu_ms_per_insert=None
            if phase.server_cpu_s is None
            else round(phase.server_cpu_s * 1000 / inserts, 3),
            server_peak_rss_mib=None if phase.server_peak_rss_mib is None else round(phase.server_peak_rss_mib, 1),
            server_hwm_mib=None if phase.server_hwm_mib is None else round(phase.server_hwm_mib, 1),
            foreign_cpu_machine_s=round(phase.foreign_machine_s, 3),
        )
        if len(phase.per_server) > 1:
            for i, server in enumerate(phase.per_server):
                self.figures[f"server{i}_cpu_s"] = round(server.cpu_s, 3)
                self.figures[f"server{i}_cpu_ms_per_insert"] = round(server.cpu_s * 1000 / inserts, 3)
                self.figures[f"server{i}_peak_rss_mib"] = round(server.peak_rss_mib, 1)
                self.figures[f"server{i}_hwm_mib"] = round(server.hwm_mib, 1)
        for who, foreign in (("server", phase.foreign_server_core_s), ("client", phase.foreign_client_core_s)):
            self.figures[f"foreign_cpu_{who}_core_s"] = None if foreign is None else round(foreign, 3)
            # Ticks are 10 ms: ignore the odd tick of a system daemon.
            if foreign is not None and foreign > max(CONTENDED_RATIO * phase.wall_s, 0.03):
                self.notes.append(
                    f"contended: other processes used {foreign:.2f}s of the {who}'s core during a "
                    f"{phase.wall_s:.2f}s phase; latencies are inflated"
                )
        if phase.foreign_server_core_s is None and phase.foreign_machine_s > max(CONTENDED_RATIO * phase.wall_s, 0.03):
            # Nothing pinned (several servers on a small machine): only the machine-wide figure is left.
            self.notes.append(
                f"shared machine: other processes (database, Redis, other users) used "
                f"{phase.foreign_machine_s:.2f} CPU-s during a {phase.wall_s:.2f}s phase "
                f"({phase.foreign_machine_s / phase.wall_s:.2f} cores)"
            )
        if phase.client_bound:
            self.client_bound = True
            self.notes.append(f"client-bound: client CPU {phase.client_cpu_s:.2f}s over a {phase.wall_s:.2f}s phase")

    def add_latencies(self, prefix: str, samples: Sequence[float]) -> None:
        self.figures[f"{prefix}_p50_ms"] = ms(percentile(samples, 50))
        self.figures[f"{prefix}_p99_ms"] = ms(percentile(samples, 99))
        self.figures[f"{prefix}_samples"] = len(samples)


class Inserts:
    """The admin's inserts of one phase: send times, reply times and keys, in request order."""

    def __init__(self, admin: Conn, first_index: int) -> None:
        self.admin = admin
        self.first_index = first_index
        self.pending: list[Pending] = []

    def send(self) -> Pending:
        data = metric(self.first_index + len(self.pending))
        pending = self.admin.send("store.insert", bucket=BUCKET, data=data)
        self.pending.append(pending)
        return pending

    async def collect(self) -> tuple[list[float], list[float], list[str], list[str]]:
        """Await every reply; return send times, reply times, keys and names."""
        sends, replies, ids, names = [], [], [], []
        for pending in self.pending:
            t_reply, frame = await self.admin.reply(pending)
            record = result_data("admin", pending, frame)
            ids.append(inserted_id("admin", record, pending.request["data"]))
            names.append(pending.request["data"]["name"])
            sends.append(pending.t_sent)
            replies.append(t_reply)
        return sends, replies, ids, names


async def scenario(
    ctx: Context, name: str, body: Callable[[Context, RunResult, Conn, list[Conn]], Awaitable[None]]
) -> RunResult:
    """Run one scenario body with an admin connection, closing every connection afterwards."""
    result = RunResult(name)
    conns: list[Conn] = []
    try:
        admin = await open_admin(ctx)
        conns.append(admin)
        await reset_bucket(admin)
        await body(ctx, result, admin, conns)
        result.failures.extend(admin.violations)
    except (RequestFailed, OSError, TimeoutError) as exc:
        result.failures.append(f"{name} aborted: {exc}")
        result.failures.extend(summarize([v for conn in conns for v in conn.violations]))
    except Exception as exc:  # a malformed reply can break the client's own parsing: report, go on
        traceback.print_exc()
        result.failures.append(f"{name} aborted by a client error on unexpected data: {exc!r}")
        result.failures.extend(summarize([v for conn in conns for v in conn.violations]))
    finally:
        gc.enable()  # a phase that failed never reached PhaseMeter.stop
        await close_all(conns)
        # Let the server drop this run's subscriptions before the next run writes.
        await asyncio.sleep(0.5)
    return result


async def run_s1(ctx: Context, result: RunResult, admin: Conn, conns: list[Conn]) -> None:
    specs = [ALL_METRICS, CPU_METRICS, METRIC_COUNT, LATEST_10]
    n = ctx.sizes.s1_inserts
    viewers = await open_viewers(ctx, ctx.sizes.s1_viewers, specs)
    conns.extend(viewer.conn for viewer in viewers)
    await settle(viewers)

    meter = PhaseMeter(ctx.server_pids)
    meter.start()
    inserts = Inserts(admin, 0)
    for _ in range(n):
        await admin.reply(inserts.send())  # one at a time: wait for each result
    sends, replies, ids, names = await inserts.collect()
    finals = expected_finals(ids, names, n, specs)
    reached, phase = await await_final(viewers, lambda v: holds(v, finals), meter, ctx.timeout)
    meter.stop()
    await linger(viewers)

    finish(result, viewers, specs, finals, phase, n, reached, ctx.timeout)
    result.add_latencies("insert", [r - s for s, r in zip(sends, replies, strict=True)])
    result.add_latencies("push", push_latencies(viewers, spec_label(METRIC_COUNT), 0, sends))
    result.add_latencies("push_reflect", reflect_latencies(viewers, spec_label(METRIC_COUNT), 0, sends))


async def run_s2(ctx: Context, result: RunResult, admin: Conn, conns: list[Conn]) -> None:
    specs = [METRIC_COUNT]
    n, rate = ctx.sizes.s2_inserts, ctx.sizes.s2_rate
    viewers = await open_viewers(ctx, ctx.sizes.s2_viewers, specs)
    conns.extend(viewer.conn for viewer in viewers)
    await settle(viewers)

    meter = PhaseMeter(ctx.server_pids)
    meter.start()
    inserts = Inserts(admin, 0)
    start = time.perf_counter()
    for i in range(n):
        # Paced: send on schedule whatever the replies are doing.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        inserts.send()
    sends, replies, ids, names = await inserts.collect()
    finals = expected_finals(ids, names, n, specs)
    reached, phase = await await_final(viewers, lambda v: holds(v, finals), meter, ctx.timeout)
    meter.stop()
    await linger(viewers)

    finish(result, viewers, specs, finals, phase, n, reached, ctx.timeout)
    samples = push_latencies(viewers, spec_label(METRIC_COUNT), 0, sends)
    result.add_latencies("insert", [r - s for s, r in zip(sends, replies, strict=True)])
    result.add_latencies("push", samples)
    result.add_latencies("push_reflect", reflect_latencies(viewers, spec_label(METRIC_COUNT), 0, sends))
    result.figures["viewers"] = len(viewers)
    result.figures["viewers_with_every_push"] = sum(
        len(viewer.pushes(spec_label(METRIC_COUNT))) == n for viewer in viewers
    )
    note_skipped_counts(result, viewers, len(ctx.urls), n)
    if len(ctx.urls) > 1:
        # The admin's own process hears of a change directly, the others through the channel layer.
        for server in range(len(ctx.urls)):
            mine = viewers[server :: len(ctx.urls)]  # viewer i is on server i % servers (open_viewer)
            samples = push_latencies(mine, spec_label(METRIC_COUNT), 0, sends)
            result.figures[f"server{server}_push_p50_ms"] = ms(percentile(samples, 50))
            result.figures[f"server{server}_push_p99_ms"] = ms(percentile(samples, 99))
    result.figures["send_span_s"] = round(sends[-1] - sends[0], 3)
    # How far the fan-out fell behind the writer: the last viewer's final count after the last send.
    result.figures["final_count_lag_ms"] = final_lag_ms(viewers, n, sends[-1])


def note_skipped_counts(result: RunResult, viewers: Sequence[Viewer], servers: int, n: int, limit: int = 8) -> None:
    """Which counts 1..n viewers never received (coalesced), by server: a round that covered two
    inserts shows as one count skipped by every viewer of that process."""
    skipped: dict[tuple[int, int], int] = {}
    for index, viewer in enumerate(viewers):  # viewer i is on server i % servers (open_viewer)
        got = {push.data for push in viewer.pushes(spec_label(METRIC_COUNT))}
        for count in range(1, n + 1):
            if count not in got:
                skipped[(index % servers, count)] = skipped.get((index % servers, count), 0) + 1
    if servers > 1:
        for server in range(servers):
            result.figures[f"server{server}_skipped_pushes"] = sum(v for (s, _), v in skipped.items() if s == server)
    if skipped:
        worst = sorted(skipped.items(), key=lambda item: (-item[1], item[0]))[:limit]
        result.notes.append(
            "counts never pushed (coalesced): "
            + ", ".join(f"{count} on server{server} to {viewers_} viewers" for (server, count), viewers_ in worst)
            + (f" and {len(skipped) - limit} more" if len(skipped) > limit else "")
        )


async def run_s3(ctx: Context, result: RunResult, admin: Conn, conns: list[Conn]) -> None:
    specs = [METRIC_COUNT, LATEST_10]
    n, window = ctx.sizes.s3_inserts, ctx.sizes.s3_window
    viewers = await open_viewers(ctx, ctx.sizes.s3_viewers, specs)
    conns.extend(viewer.conn for viewer in viewers)
    await settle(viewers)

    meter = PhaseMeter(ctx.server_pids)
    meter.start()
    inserts = Inserts(admin, 0)
    in_flight = asyncio.Semaphore(window)
    for _ in range(n):
        await in_flight.acquire()
        pending = inserts.send()
        pending.future.add_done_callback(lambda _: in_flight.release())
    sends, replies, ids, names = await inserts.collect()
    finals = expected_finals(ids, names, n, specs)
    reached, phase = await await_final(viewers, lambda v: holds(v, finals), meter, ctx.timeout)
    meter.stop()
    await linger(viewers)

    finish(result, viewers, specs, finals, phase, n, reached, ctx.timeout)
    last_result = max(replies)
    result.figures["inserts_per_s"] = round(n / (last_result - sends[0]), 1)
    result.add_latencies("insert", [r - s for s, r in zip(sends, replies, strict=True)])
    result.figures["final_count_lag_ms"] = final_lag_ms(viewers, n, last_result)
    await check_insert_order(admin, ids, result)


async def run_s4(ctx: Context, result: RunResult, admin: Conn, conns: list[Conn]) -> None:
    specs = [ALL_METRICS]
    sizes = ctx.sizes
    started = time.perf_counter()
    preload_ids, preload_names = await preload(admin, sizes.s4_preload, sizes.s4_batch)
    result.figures["preload_s"] = round(time.perf_counter() - started, 3)
    viewers = await open_viewers(ctx, sizes.s4_viewers, specs)
    conns.extend(viewer.conn for viewer in viewers)
    await settle(viewers)

    n = sizes.s4_inserts
    meter = PhaseMeter(ctx.server_pids)
    meter.start()
    inserts = Inserts(admin, sizes.s4_preload)
    for _ in range(n):
        before = [len(viewer.conn.raw) for viewer in viewers]
        await admin.reply(inserts.send())
        # Every viewer's push for this insert must arrive before the next one is sent.
        waits = [viewer.conn.wait_raw(count + 1, ctx.timeout) for viewer, count in zip(viewers, before, strict=True)]
        await asyncio.gather(*waits)
    sends, replies, ids, names = await inserts.collect()
    finals = expected_finals(preload_ids + ids, preload_names + names, n, specs)
    reached, phase = await await_final(viewers, lambda v: holds(v, finals), meter, ctx.timeout)
    meter.stop()
    await linger(viewers)

    finish(
        result,
        viewers,
        specs,
        finals,
        phase,
        n,
        reached,
        ctx.timeout,
        initial=expected_finals(preload_ids, preload_names, 0, specs),
    )
    result.add_latencies("insert", [r - s for s, r in zip(sends, replies, strict=True)])
    result.add_latencies("push", push_latencies(viewers, spec_label(ALL_METRICS), sizes.s4_preload, sends))
    result.add_latencies("push_reflect", reflect_latencies(viewers, spec_label(ALL_METRICS), sizes.s4_preload, sends))
    sizes_seen = [push.nbytes for viewer in viewers for push in viewer.pushes(spec_label(ALL_METRICS))]
    result.figures["bytes_per_push"] = round(statistics.mean(sizes_seen)) if sizes_seen else None


async def preload(admin: Conn, count: int, batch: int) -> tuple[list[str], list[str]]:
    """Insert `count` metrics in transactions of `batch`; return their keys and names in order."""
    ids: list[str] = []
    names: list[str] = []
    for first in range(0, count, batch):
        data = [metric(i) for i in range(first, min(first + batch, count))]
        operations = [{"op": "insert", "bucket": BUCKET, "data": item} for item in data]
        reply = await admin.call("store.transaction", operations=operations)
        results = reply.get("results") if isinstance(reply, dict) else None
        if not isinstance(results, list) or [r.get("index") for r in results] != list(range(len(data))):
            raise RequestFailed(f"admin: transaction of {len(data)} inserts returned {brief(reply)}")
        ids.extend(inserted_id("admin", r.get("data"), item) for r, item in zip(results, data, strict=True))
        names.extend(item["name"] for item in data)
    return ids, names


def holds(viewer: Viewer, finals: dict[str, tuple[JSON, int]]) -> bool:
    return all(normalize(viewer.state(label)) == final for label, (final, _) in finals.items())


def final_lag_ms(viewers: Sequence[Viewer], count: int, since: float) -> float | None:
    """Milliseconds from `since` until every viewer had received the count `count` (None if one never did)."""
    arrivals = [
        next((push.t for push in viewer.pushes(spec_label(METRIC_COUNT)) if push.data == count), None)
        for viewer in viewers
    ]
    known = [t for t in arrivals if t is not None]
    return ms(max(known) - since) if known and len(known) == len(arrivals) else None


def finish(
    result: RunResult,
    viewers: Sequence[Viewer],
    specs: Sequence[QuerySpec],
    finals: dict[str, tuple[JSON, int]],
    phase: PhaseFigures,
    inserts: int,
    reached: bool,
    timeout: float,
    initial: dict[str, tuple[JSON, int]] | None = None,
) -> None:
    """Record the phase figures and the correctness verdict of every viewer."""
    if not reached:
        result.failures.append(f"not every viewer held the final state {timeout:.0f}s after the last insert")
    if initial is None:
        initial = expected_finals([], [], 0, specs)
    failures, notes, received = check_viewers(viewers, {label: value for label, (value, _) in initial.items()}, finals)
    result.failures.extend(summarize(failures))
    result.notes.extend(notes)
    result.add_phase(phase, inserts)
    result.figures["pings_answered"] = sum(viewer.conn.pings for viewer in viewers)
    for label, count in received.items():
        result.figures[f"pushes[{label}]"] = count
        result.figures[f"pushes_expected[{label}]"] = finals[label][1] * len(viewers)


async def check_insert_order(admin: Conn, ids: Sequence[str], result: RunResult) -> None:
    """Pipelined inserts must be stored in request order; `store.last` shows the stored order."""
    newest = await admin.call("store.last", bucket=BUCKET, n=10)
    if normalize(newest) != list(ids[-10:]):
        result.failures.append(
            f"store.last n=10 gives {brief(normalize(newest))}, "
            f"but the last 10 requests inserted {brief(list(ids[-10:]))}"
        )


def summarize(failures: Sequence[str], limit: int = 12) -> list[str]:
    """Keep failure lists readable when a thousand viewers fail the same way."""
    if len(failures) <= limit:
        return list(failures)
    return [*failures[:limit], f"... and {len(failures) - limit} more failures"]


SCENARIOS: dict[str, Callable[[Context, RunResult, Conn, list[Conn]], Awaitable[None]]] = {
    "S1": run_s1,
    "S2": run_s2,
    "S3": run_s3,
    "S4": run_s4,
}

HEADLINE = {
    "S1": [
        "insert_p50_ms",
        "insert_p99_ms",
        "push_p50_ms",
        "push_p99_ms",
        "push_reflect_p99_ms",
        "server_cpu_ms_per_insert",
    ],
    "S2": [
        "push_p50_ms",
        "push_p99_ms",
        "push_reflect_p99_ms",
        "server_cpu_ms_per_insert",
        "server_peak_rss_mib",
        "final_count_lag_ms",
        "insert_p99_ms",
        "viewers",
        "viewers_with_every_push",
    ],
    "S3": ["inserts_per_s", "final_count_lag_ms", "server_cpu_ms_per_insert", "insert_p99_ms"],
    "S4": [
        "push_p50_ms",
        "push_p99_ms",
        "push_reflect_p99_ms",
        "bytes_per_push",
        "server_cpu_ms_per_insert",
        "preload_s",
    ],
}
COMMON = [
    "phase_s",
    "client_cpu_ratio",
    "foreign_cpu_server_core_s",
    "foreign_cpu_client_core_s",
    "foreign_cpu_machine_s",
]


def per_server_keys(figures: dict[str, JSON]) -> list[str]:
    """`server0_cpu_ms_per_insert`, ...: present when the run had several server processes."""
    return [key for key in figures if key.startswith("server") and key[len("server")].isdigit()]


# --------------------------------------------------------------------------- report


def median_figures(runs: Sequence[RunResult]) -> dict[str, JSON]:
    keys = dict.fromkeys(key for run in runs for key in run.figures)
    medians: dict[str, JSON] = {}
    for key in keys:
        values = [run.figures.get(key) for run in runs]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        medians[key] = round(statistics.median(numbers), 3) if numbers else None
    return medians


def fmt(value: JSON) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report(name: str, runs: Sequence[RunResult], ctx: Context, smoke: bool) -> tuple[list[str], bool]:
    """Table rows for one scenario, after printing its JSON line; returns (rows, ok)."""
    medians = median_figures(runs)
    failures = [f"run {i}: {failure}" for i, run in enumerate(runs, 1) for failure in run.failures]
    notes = sorted({note for run in runs for note in run.notes})
    ok = not failures
    line = {
        "scenario": name,
        "ok": ok,
        "smoke": smoke,
        "urls": ctx.urls,
        "server_pids": ctx.server_pids,
        "sizes": asdict(ctx.sizes),
        "runs": len(runs),
        "median": medians,
        "per_run": [run.figures for run in runs],
        "client_bound": any(run.client_bound for run in runs),
        "failures": failures,
        "notes": notes,
        "busy_before": ctx.busy_before,
    }
    print("BENCH_JSON " + json.dumps(line, separators=(",", ":")), flush=True)
    rows = []
    for key in HEADLINE[name] + per_server_keys(medians) + COMMON:
        per_run = " / ".join(fmt(run.figures.get(key)) for run in runs)
        rows.append(f"{name:<4} {key:<48} {fmt(medians.get(key)):>12}   {per_run if len(runs) > 1 else ''}")
    for key in medians:
        if key.startswith("pushes["):
            label = key[len("pushes[") : -1]
            got = f"{fmt(medians[key])}/{fmt(medians.get(f'pushes_expected[{label}]'))}"
            rows.append(f"{name:<4} {'pushes (got/expected) ' + label:<48} {got:>12}")
    status = "OK" if ok else f"FAIL ({len(failures)})"
    if line["client_bound"]:
        status += ", client-bound"
    rows.append(f"{name:<4} {'status':<48} {status:>12}")
    rows.extend(f"{name:<4}   note: {note}" for note in notes)
    if ctx.busy_before:
        rows.append(f"{name:<4}   note: machine not quiet before the runs: {'; '.join(ctx.busy_before)}")
    rows.extend(f"{name:<4}   FAIL: {failure}" for failure in failures)
    return rows, ok


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"warning: open-file limit {hard} is below the {needed} sockets this run needs", file=sys.stderr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/")
    parser.add_argument(
        "--urls",
        default=None,
        help="comma-separated URLs of several server processes (replaces --url): viewers are "
        "spread round-robin, the admin uses the first",
    )
    parser.add_argument(
        "--origin",
        default=None,
        help="Origin header (default: http(s)://host:port of --url, as a browser sends; '' for none)",
    )
    parser.add_argument("--server-pid", type=int, default=None, help="server process, for CPU and RSS figures")
    parser.add_argument(
        "--server-pids",
        default=None,
        help="comma-separated server processes (replaces --server-pid): per-process CPU and RSS",
    )
    parser.add_argument("--scenarios", default="S1,S2,S3,S4")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per scenario, median reported (default 3; 1 with --smoke)"
    )
    parser.add_argument("--viewers", type=int, default=None, help="S2 viewers (default 1,000)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a correctness check for CI")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the viewers' final state")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio event loop")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios.split(",") if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    return args


def default_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


async def main(args: argparse.Namespace) -> int:
    sizes = SMOKE_SIZES if args.smoke else Sizes()
    if args.viewers is not None:
        sizes = Sizes(**{**asdict(sizes), "s2_viewers": args.viewers})
    urls = args.urls.split(",") if args.urls else [args.url]
    origins = [default_origin(url) if args.origin is None else (args.origin or None) for url in urls]
    if args.server_pids:
        server_pids = [int(pid) for pid in args.server_pids.split(",")]
    else:
        server_pids = [args.server_pid] if args.server_pid else []
    ctx = Context(urls, origins, server_pids, sizes, args.timeout)
    runs = args.runs or (1 if args.smoke else 3)
    raise_fd_limit(sizes.s2_viewers + 64)
    if not args.smoke:
        ours = {os.getpid(), *(pid for server in server_pids for pid in process_tree(server))}
        ctx.busy_before = busy_processes(ours)
        if ctx.busy_before:
            print(f"warning: busy processes before the runs: {'; '.join(ctx.busy_before)}", file=sys.stderr)

    table: list[str] = []
    all_ok = True
    for name in args.scenarios.split(","):
        results = []
        for run in range(1, runs + 1):
            print(f"{name} run {run}/{runs} ...", file=sys.stderr, flush=True)
            results.append(await scenario(ctx, name, SCENARIOS[name]))
        rows, ok = report(name, results, ctx, args.smoke)
        table.extend(rows)
        all_ok = all_ok and ok

    print(f"\n{'':<4} {'figure (median of ' + str(runs) + ' runs)':<48} {'value':>12}   per run")
    print("\n".join(table))
    print(f"\nresult: {'all checks passed' if all_ok else 'CORRECTNESS FAILURES'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.no_uvloop:
        sys.exit(asyncio.run(main(arguments)))
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(main(arguments)))
    sys.exit(uvloop.run(main(arguments)))
