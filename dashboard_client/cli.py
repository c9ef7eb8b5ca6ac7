"""The client's command lines: `dashboard-collect` and `dashboard-watch`, which
the server's `collect_host_metrics` and `watch_query` management commands wrap.

Each command is an `add_*_arguments(parser)` and a function of the parsed
options that writes its output a line at a time through `write`, so the
console scripts here and the Django commands share options, help and
behaviour. Failures to report in one line raise CommandFailed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .collector import HostSampler, collect, host_label
from .connection import DashboardClient
from .durations import duration_argument, positive_duration_argument
from .errors import DashboardError

DEFAULT_URL = "ws://127.0.0.1:8000/ws/"

Write = Callable[[str], None]  # writes one line of output

COLLECT_HELP = (
    "Sends host metrics to the dashboard server every --interval: host.cpu (%), host.load1, "
    "host.memory.used (MB), host.disk.used (%), host.net.rx and host.net.tx (B/s, all interfaces "
    "but loopback). Each sample is one store.transaction, so subscribers see one change per sample. "
    "Needs a token that may write (admin). Ctrl-C stops it."
)
WATCH_HELP = (
    "Subscribes to QUERY and prints one line per result as it arrives: the time (UTC), "
    "'initial' or 'push', the subscription id and the result as JSON. After a reconnect the "
    "subscription is made again and its fresh initial result is printed, with its new id. "
    "Ctrl-C stops it."
)


class CommandFailed(Exception):
    """A failure the command reports in one line, without a traceback."""


# --- shared by the commands -------------------------------------------------------------


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("DASHBOARD_URL") or DEFAULT_URL,
        help="the server's WebSocket URL (default: $DASHBOARD_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("DASHBOARD_TOKEN"),
        help="the token to log in with (default: $DASHBOARD_TOKEN)",
    )
    parser.add_argument(
        "--wait-for-server",
        type=duration_argument,
        default=30.0,
        metavar="DURATION",
        help="how long to keep trying when the server is not up yet (default: 30s)",
    )


def make_client(options: Mapping[str, Any]) -> DashboardClient:
    if not options["token"]:
        raise CommandFailed("--token is required (or set DASHBOARD_TOKEN)")
    return DashboardClient(options["url"], options["token"], wait_for_server=options["wait_for_server"])


def run(main: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Runs `main(stop)` on a new event loop; SIGINT and SIGTERM set `stop`
    (a second Ctrl-C interrupts at once). Client errors become CommandFailed."""

    async def runner() -> Any:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        main_task = asyncio.current_task()
        assert main_task is not None  # asyncio.run runs this in a task

        def on_signal() -> None:
            if stop.is_set():
                main_task.cancel()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        try:
            return await main(stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(runner())
    except DashboardError as error:
        raise CommandFailed(str(error)) from None
    except asyncio.CancelledError:
        raise CommandFailed("interrupted") from None


# --- collect ----------------------------------------------------------------------------


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument(
        "--interval",
        type=positive_duration_argument,
        default=5.0,
        metavar="DURATION",
        help="time between samples, e.g. 1s, 500ms (default: 5s); CPU and network rates are measured over it",
    )
    parser.add_argument("--once", action="store_true", help="store one sample (measured over one interval) and exit")
    parser.add_argument(
        "--host-label",
        default="",
        metavar="LABEL",
        help="put LABEL in the names (host.LABEL.cpu, ...) so that several machines "
        "can report to one server; 'auto' uses this machine's host name "
        "(default: no label, names are host.cpu, ...)",
    )
    parser.add_argument("--disk", default="/", metavar="PATH", help="report the filesystem holding PATH (default: /)")


def collect_host_metrics(options: Mapping[str, Any], write: Write) -> int:
    """Collects until stopped (or one sample with `once`); returns the number
    of samples stored. Prints each sample with `once` or verbosity 2."""
    label = host_label(options["host_label"]) if options["host_label"] else None
    sampler = HostSampler(label=label, disk_path=options["disk"])
    interval = options["interval"]
    once = options["once"]
    verbosity = options["verbosity"]

    def report(metrics: list[dict[str, Any]]) -> None:
        if once or verbosity >= 2:
            for metric in metrics:
                write(f"{metric['name']} {metric['value']} {metric['unit']}".rstrip())

    async def main(stop: asyncio.Event) -> int:
        async with make_client(options) as client:
            if not once and verbosity >= 1:
                write(f"collecting host metrics every {interval:g} s into {client.url} (Ctrl-C stops)")
            return await collect(client, sampler, interval=interval, once=once, stop=stop, on_sample=report)

    stored: int = run(main)
    if not once and verbosity >= 1:
        write(f"stopped after {stored} sample(s)")
    return stored


# --- watch ------------------------------------------------------------------------------


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return value


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="a query name, e.g. metric-count, metrics-by-name")
    parser.add_argument(
        "--params",
        type=json_object,
        default=None,
        metavar="JSON",
        help='the query\'s params as a JSON object, e.g. \'{"name": "host.cpu"}\'',
    )
    add_connection_arguments(parser)
    parser.add_argument(
        "--count",
        type=positive_int,
        default=None,
        metavar="N",
        help="exit after N pushes (initial results do not count)",
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")


def watch_query(options: Mapping[str, Any], write: Write) -> None:
    """Writes a line per result until stopped, or after `count` pushes."""
    count = options["count"]
    indent = 2 if options["pretty"] else None

    async def main(stop: asyncio.Event) -> None:
        pushes = 0
        enough = asyncio.Event()
        async with make_client(options) as client:

            def show(data: Any) -> None:
                nonlocal pushes
                # The only subscription; the callback also runs before
                # subscribe() returns, so it is looked up, not captured.
                subscription = client.subscriptions[0]
                when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                kind = "initial" if subscription.initial else "push"
                write(f"{when} {kind} {subscription.id} {json.dumps(data, indent=indent, ensure_ascii=False)}")
                if kind == "push":
                    pushes += 1
                    if count is not None and pushes >= count:
                        enough.set()

            subscription = await client.subscribe(options["query"], options["params"], show)
            waits = [
                asyncio.create_task(stop.wait()),
                asyncio.create_task(enough.wait()),
                # These two end only in failure: the client gave up
                # (revoked session), or the server refused the
                # subscription when it was made again.
                asyncio.create_task(client.wait_closed()),
                asyncio.create_task(subscription.wait_for(lambda _: False)),
            ]
            try:
                finished, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
            for task in finished:
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    raise error

    run(main)


# --- console scripts ----------------------------------------------------------------------


def _console(
    prog: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    command: Callable[[Mapping[str, Any], Write], Any],
    argv: Sequence[str] | None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=help)
    add_arguments(parser)
    # As Django's commands have it: 0 quiet, 1 normal, 2 each sample and the client's reconnects.
    parser.add_argument(
        "-v", "--verbosity", type=int, choices=[0, 1, 2, 3], default=1, help="0 quiet, 1 normal (default), 2 and 3 more"
    )
    options = vars(parser.parse_args(argv))
    logging.basicConfig(
        level=logging.INFO if options["verbosity"] >= 2 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def write(line: str) -> None:
        print(line, flush=True)

    try:
        command(options, write)
    except CommandFailed as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0


def collect_main(argv: Sequence[str] | None = None) -> int:
    """`dashboard-collect`: the host metrics collector."""
    return _console("dashboard-collect", COLLECT_HELP, add_collect_arguments, collect_host_metrics, argv)


def watch_main(argv: Sequence[str] | None = None) -> int:
    """`dashboard-watch`: a terminal view of a query."""
    return _console("dashboard-watch", WATCH_HELP, add_watch_arguments, watch_query, argv)
