"""Each server process's hub: its live queries, its connections and its link
to the other processes, put together.

After a commit, `publish_change` tells the local hub directly and sends one
small message to the channel-layer group every process's hub joins; each hub
evaluates its own distinct live queries once and hands push frames to its
own connections. Channel-layer traffic per change is one message, whatever
the number of viewers (docs/fanout.md). Revocations travel the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from telemetry import instruments

from . import sqlite_watch
from .connections import Connections
from .layer import CHANGES_GROUP, PROCESS_ID, LayerLink, Message
from .live import LiveQueries
from .quotas import OutboxLedger

logger = logging.getLogger(__name__)

CHANGED_MESSAGE = "store.changed"
REVOKED_MESSAGE = "session.revoked"


class Hub:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        limits = settings.DASHBOARD
        self.queries = LiveQueries()
        self.connections = Connections()
        self.outbox_ledger = OutboxLedger(limits["MAX_OUTBOX_BYTES_PER_USER"], limits["MAX_OUTBOX_BYTES_TOTAL"])
        self.link: LayerLink | None = None
        self.tasks: list[asyncio.Task] = []
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        async with self._starting:
            if self._started:
                return
            layer = get_channel_layer()
            self.link = LayerLink(layer, self.handle, self.queries.all_stale, settings.DASHBOARD["LAYER_PROBE_SECONDS"])
            self.tasks = [
                *await self.link.join(),
                *self.queries.tasks(),
                *self.connections.tasks(),
                *instruments.tasks(),
            ]
            interval = settings.DASHBOARD["EXTERNAL_WRITES_POLL_SECONDS"]
            if sqlite_watch.hears_no_other_process(layer) and interval > 0:
                self.tasks.append(
                    asyncio.create_task(sqlite_watch.watch(interval, self._external_write), name="hub-watch-sqlite")
                )
            self._started = True
            _running[self.loop] = self

    async def stop(self) -> None:
        _running.pop(self.loop, None)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self._started = False

    def handle(self, message: Message) -> None:
        """A message from any process, this one included."""
        kind = message.get("type")
        if kind == CHANGED_MESSAGE:
            self.queries.note_changes(message.get("changes") or {}, message.get("names") or {})
        elif kind == REVOKED_MESSAGE:
            self.connections.revoke_sessions(set(message.get("tokens") or ()), str(message.get("reason", "")))

    def _external_write(self) -> None:
        # Unchanged results are not pushed, so a write that was also
        # announced costs one evaluation and no push.
        if self.queries.live:
            self.queries.all_stale()


# --- the process's hub ------------------------------------------------------------

# One hub per event loop (tests run a loop each); `_running` holds the ones
# started, which is where changes committed in other threads are delivered.
_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}
_running: dict[asyncio.AbstractEventLoop, Hub] = {}


def get_hub() -> Hub:
    """This event loop's hub."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub()
    return hub


def running_hubs() -> list[Hub]:
    return list(_running.values())


def telemetry_state() -> instruments.State:
    """The process's connections, subscriptions and queues, for /metrics
    (registered in RealtimeConfig.ready; read when scraped, from any thread:
    it only reads counts)."""
    state = instruments.State()
    for hub in running_hubs():
        authenticated = sum(1 for viewer in list(hub.connections.all) if viewer.session is not None)
        state.connections_authenticated += authenticated
        state.connections_unauthenticated += len(hub.connections) - authenticated
        state.subscriptions += hub.queries.subscription_count
        state.live_queries += len(hub.queries.live)
        state.outbox_bytes += hub.outbox_ledger.total
        if hub.link is not None and not hub.link.healthy:
            state.layer_healthy = 0
    return state


async def stop_all() -> None:
    """Stops every hub and forgets them (tests, between event loops)."""
    for hub in list(_hubs.values()):
        if hub.loop.is_running() and hub.loop is asyncio.get_running_loop():
            await hub.stop()
    forget_all()


def forget_all() -> None:
    _hubs.clear()
    _running.clear()


# --- publishing (any thread) ------------------------------------------------------


def publish_change(
    sender: Any, changes: dict[str, list[str] | None], names: dict[str, list[str]] | None = None, **kwargs: Any
) -> None:
    """`records_changed` receiver: runs in the committing thread, after commit."""
    instruments.note_change(changes)
    message: Message = {"type": CHANGED_MESSAGE, "changes": changes}
    if names:
        message["names"] = names
    _broadcast(message, "a store change")


def publish_revocation(sender: Any = None, token_ids: list[str] | None = None, reason: str = "", **kwargs: Any) -> None:
    """Ends, on every server process, the live sessions opened with these
    tokens (ids as the token validator puts them in Session.token_id).
    A receiver of `accounts.signals.sessions_revoked`; callable from any thread."""
    if token_ids:
        _broadcast(
            {"type": REVOKED_MESSAGE, "tokens": [str(t) for t in token_ids], "reason": reason}, "a session revocation"
        )


def _broadcast(message: Message, what: str) -> None:
    """Delivers a message to the hub of every server process: in a server
    process through its own hub's link (handled here at once, sent to the
    others); the calling thread (often the database thread) never waits for
    the loop. Elsewhere (a management command) through the layer only."""
    for hub in running_hubs():
        if hub.loop.is_running() and hub.link is not None:
            if _in_other_thread(hub.loop):
                hub.loop.call_soon_threadsafe(hub.link.send, message)
            else:
                hub.link.send(message)
            return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(CHANGES_GROUP, {**message, "origin": PROCESS_ID})
    except Exception:
        # What it reports is already committed; failing now would lie to the
        # caller. Hubs repair missed changes when their layer probes return.
        logger.exception("could not publish %s to the channel layer", what)


def _in_other_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True
