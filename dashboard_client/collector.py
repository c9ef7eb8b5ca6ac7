"""Host metrics read from /proc (and the standard library), sent through the client.

Linux's /proc gives CPU time, memory and network counters in a few lines of
text, so no dependency is needed (psutil would add a compiled package to the
client's requirements for six numbers). Load average and disk use come from
`os.getloadavg` and `shutil.disk_usage`, which also work on macOS; metrics
whose source is missing are left out of the sample. Its command line
(`dashboard-collect`, and the server's `collect_host_metrics`) is in `cli`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .connection import DashboardClient
from .errors import ConnectionLost, RequestTimeout

logger = logging.getLogger("dashboard_client.collector")

BUCKET = "metrics"


@dataclass(frozen=True)
class Counters:
    """Cumulative counters whose rate of change is the metric."""

    at: float  # monotonic seconds
    cpu: tuple[int, int] | None  # (busy, total) jiffies
    net: tuple[int, int] | None  # (received, transmitted) bytes


def read_cpu_times(proc: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs, from the first line of /proc/stat."""
    try:
        with open(proc / "stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest
    # time is already counted in user and nice.
    values = [int(v) for v in fields[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return total - idle, total


def read_memory_used(proc: Path) -> int | None:
    """Bytes in use: MemTotal - MemAvailable (what `free` calls used, roughly)."""
    info: dict[str, int] = {}
    try:
        with open(proc / "meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    info[name] = int(rest.split()[0]) * 1024  # the file says kB, meaning KiB
    except (OSError, ValueError, IndexError):
        return None
    if len(info) != 2:
        return None
    return info["MemTotal"] - info["MemAvailable"]


def read_network_bytes(proc: Path) -> tuple[int, int] | None:
    """(received, transmitted) bytes of every interface but loopback."""
    received = transmitted = 0
    try:
        with open(proc / "net" / "dev") as f:
            lines = f.readlines()[2:]  # two header lines
    except OSError:
        return None
    for line in lines:
        name, _, rest = line.partition(":")
        columns = rest.split()
        if name.strip() == "lo" or len(columns) < 9:
            continue
        received += int(columns[0])
        transmitted += int(columns[8])
    return received, transmitted


def disk_used_percent(path: str) -> float | None:
    """Used share of the filesystem holding `path`, as `df` computes Use%:
    used / (used + available to unprivileged users)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    space = usage.used + usage.free
    return 100.0 * usage.used / space if space else None


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def host_label(value: str) -> str:
    """A name-safe label for `--host-label`: `auto` means this machine's
    short host name; dots (which separate the parts of a metric name) and
    anything else unusual become dashes."""
    if value == "auto":
        value = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", value).strip("-") or "host"


class HostSampler:
    """Reads one sample of host metrics. Rates (CPU %, network B/s) need two
    readings, so the first `sample()` measures from the `prime()` before it."""

    def __init__(
        self,
        *,
        label: str | None = None,
        disk_path: str = "/",
        proc: str | Path = "/proc",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = "host" if not label else f"host.{label}"
        self.disk_path = disk_path
        self.proc = Path(proc)
        self.clock = clock
        self.previous: Counters | None = None

    def read_counters(self) -> Counters:
        return Counters(at=self.clock(), cpu=read_cpu_times(self.proc), net=read_network_bytes(self.proc))

    def prime(self) -> None:
        self.previous = self.read_counters()

    def sample(self, timestamp_ms: int) -> list[dict[str, Any]]:
        """The metrics to insert, all with the same timestamp (ms since epoch)."""
        now = self.read_counters()
        before, self.previous = self.previous, now
        metrics: list[dict[str, Any]] = []

        def add(name: str, value: float | None, unit: str, digits: int) -> None:
            if value is not None:
                metrics.append(
                    {
                        "name": f"{self.prefix}.{name}",
                        "value": round(value, digits),
                        "unit": unit,
                        "timestamp": timestamp_ms,
                    }
                )

        if before is not None and before.cpu and now.cpu:
            busy, total = now.cpu[0] - before.cpu[0], now.cpu[1] - before.cpu[1]
            add("cpu", 100.0 * busy / total if total > 0 else 0.0, "%", 1)
        add("load1", load_average(), "", 2)
        used = read_memory_used(self.proc)
        add("memory.used", None if used is None else used / 1_000_000, "MB", 1)
        add("disk.used", disk_used_percent(self.disk_path), "%", 1)
        elapsed = now.at - before.at if before is not None else 0.0
        if before is not None and before.net and now.net and elapsed > 0:
            rx, tx = now.net[0] - before.net[0], now.net[1] - before.net[1]
            # A counter that went backwards (interface reset) gives no rate.
            add("net.rx", rx / elapsed if rx >= 0 else None, "B/s", 0)
            add("net.tx", tx / elapsed if tx >= 0 else None, "B/s", 0)
        return metrics


def as_operations(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One `store.transaction` for a whole sample: subscribers see it as one change."""
    return [{"op": "insert", "bucket": BUCKET, "data": metric} for metric in metrics]


async def collect(
    client: DashboardClient,
    sampler: HostSampler,
    *,
    interval: float,
    once: bool = False,
    stop: asyncio.Event | None = None,
    on_sample: Callable[[list[dict[str, Any]]], None] | None = None,
) -> int:
    """Samples every `interval` seconds (the first sample measures rates over
    one interval) and inserts each sample as one transaction, until `stop`
    is set, or after one sample when `once`. A sample lost to a dropped
    connection is logged and skipped; any other error is raised. Returns the
    number of samples stored."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    sampler.prime()
    stored = 0
    next_at = loop.time() + interval
    while True:
        # Ticks keep to a fixed schedule; a slow insert does not shift them.
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
            return stored
        except TimeoutError:
            pass
        next_at = max(next_at + interval, loop.time())
        metrics = sampler.sample(int(time.time() * 1000))
        try:
            await client.transaction(as_operations(metrics))
        except (ConnectionLost, RequestTimeout) as error:
            if once:
                raise
            logger.warning("sample dropped: %s", error)
        else:
            stored += 1
            if on_sample is not None:
                on_sample(metrics)
        if once:
            return stored
