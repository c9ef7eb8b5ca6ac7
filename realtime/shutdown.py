"""Graceful shutdown: tell every client, then close with 1000.

uvicorn closes open WebSockets with 1012 as soon as it starts shutting down,
before the application hears of it. So the ASGI lifespan startup (which
uvicorn runs in the server's main thread) wraps the SIGTERM/SIGINT handlers:
on the signal each process first sends its clients
`{"type":"system","event":"shutdown","gracePeriodMs":N}`, waits the grace
period, closes them with 1000 `server_shutdown`, and only then hands the
signal to the server. daphne (the development runserver) runs no lifespan,
so it keeps its own immediate shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from django.conf import settings

from .errors import CLOSE_NORMAL
from .frames import system_frame
from .hub import running_hubs

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Set when this process starts shutting down: new connections are turned away
# (close 1001 server_shutting_down, as the reference server does) so that
# reconnecting clients find another process instead of this dying one.
shutting_down = False


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI lifespan app (uvicorn): installs the signal handlers at startup."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                install(asyncio.get_running_loop())
            except Exception:
                logger.exception("could not install the graceful shutdown handlers")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def install(loop: asyncio.AbstractEventLoop) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        previous = signal.getsignal(signum)
        signal.signal(signum, _handler(loop, previous))


def _handler(loop: asyncio.AbstractEventLoop, previous: Any) -> Any:
    state = {"started": False}

    def handle(signum: int, frame: Any) -> None:
        if state["started"]:
            # A second signal: stop waiting, let the server shut down now.
            _call(previous, signum, frame)
            return
        state["started"] = True
        task = loop.create_task(close_all_connections())
        task.add_done_callback(lambda _: _call(previous, signum, frame))

    return handle


def _call(previous: Any, signum: int, frame: Any) -> None:
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        raise SystemExit(128 + signum)


async def close_all_connections() -> None:
    """Sends the shutdown frame to every local connection, waits the grace
    period, then closes them with 1000 server_shutdown."""
    global shutting_down
    shutting_down = True
    connections = [viewer for hub in running_hubs() for viewer in hub.connections]
    if not connections:
        return
    grace_ms = settings.DASHBOARD["SHUTDOWN_GRACE_MS"]
    frame = system_frame("shutdown", gracePeriodMs=grace_ms)
    for consumer in connections:
        consumer.enqueue(frame)
    await asyncio.sleep(grace_ms / 1000)
    await asyncio.gather(
        *(consumer.close_after_outbox(CLOSE_NORMAL, "server_shutdown") for consumer in connections),
        return_exceptions=True,
    )
