"""What the client-based management commands share: connection options and
running until done or interrupted (Ctrl-C or SIGTERM stop them cleanly)."""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Awaitable, Callable

from django.core.management.base import CommandError, CommandParser

from metrics.durations import duration_argument
from realtime.client import DashboardClient, DashboardError

DEFAULT_URL = "ws://127.0.0.1:8000/ws/"


def add_connection_arguments(parser: CommandParser) -> None:
    parser.add_argument("--url", default=os.environ.get("DASHBOARD_URL") or DEFAULT_URL,
                        help="the server's WebSocket URL (default: $DASHBOARD_URL or %(default)s)")
    parser.add_argument("--token", default=os.environ.get("DASHBOARD_TOKEN"),
                        help="the token to log in with (default: $DASHBOARD_TOKEN)")
    parser.add_argument("--wait-for-server", type=duration_argument, default=30.0, metavar="DURATION",
                        help="how long to keep trying when the server is not up yet (default: 30s)")


def make_client(options: dict[str, Any]) -> DashboardClient:
    if not options["token"]:
        raise CommandError("--token is required (or set DASHBOARD_TOKEN)")
    return DashboardClient(options["url"], options["token"], wait_for_server=options["wait_for_server"])


def run(main: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    """Runs `main(stop)` on a new event loop; SIGINT and SIGTERM set `stop`
    (a second Ctrl-C interrupts at once). Client errors become CommandError."""

    async def runner() -> Any:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                main_task.cancel()
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal)
        main_task = asyncio.current_task()
        try:
            return await main(stop)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(runner())
    except DashboardError as error:
        raise CommandError(str(error)) from None
    except asyncio.CancelledError:
        raise CommandError("interrupted") from None
