"""A live subscription as the user holds it: it outlives reconnects, while
the server's subscription id behind it changes with each connection."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .errors import ENDED, DashboardError

logger = logging.getLogger("dashboard_client")

# Called with each result: the initial one, every push, and the fresh initial
# result after each resubscription. May be a plain function (run at once, in
# the client's reader: keep it quick) or a coroutine function (run in order,
# one at a time, in a task of the subscription's own).
Callback = Callable[[Any], "Awaitable[None] | None"]


class Unsubscriber(Protocol):
    """What a subscription needs of its client (a DashboardClient), named here
    so that this module does not import the one that imports it."""

    async def unsubscribe(self, subscription: Subscription) -> None: ...


class Subscription:
    """What `DashboardClient.subscribe` returns.

    `data` is the latest result received, and `initial` says whether it was
    an initial result (of the first subscribe or of a resubscription after a
    reconnect) rather than a push; `id` is the server's current subscription
    id (it changes after a reconnect); `error` says why the subscription
    ended when the server refused it on resubscribing."""

    def __init__(
        self, client: Unsubscriber, query: str, params: dict[str, Any] | None, callback: Callback | None
    ) -> None:
        self.client = client
        self.query = query
        self.params = params
        self.callback = callback
        self.id: str | None = None
        self.data: Any = None
        self.initial = False
        self.active = False
        self.error: DashboardError | None = None
        # How many results arrived (initial results included), and how many
        # times the subscription was made again after a reconnect.
        self.updates = 0
        self.resubscriptions = 0
        self._waiters: list[asyncio.Future] = []
        self._queue: collections.deque[Awaitable[None]] = collections.deque()
        self._runner: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self.query} {self.params or {}} id={self.id} active={self.active}>"

    async def unsubscribe(self) -> None:
        await self.client.unsubscribe(self)

    # A timeout argument, as asyncio.wait_for has it: the common call is a bounded wait.
    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float | None = None) -> Any:
        """Waits until `predicate(data)` holds for the latest result; returns it.
        Raises TimeoutError after `timeout` seconds, or DashboardError if the
        subscription ends first (its `error`, or code ENDED when it was
        unsubscribed or the client closed)."""
        async with asyncio.timeout(timeout):
            while not (self.updates and predicate(self.data)):
                if self.error is not None:
                    raise self.error
                if not self.active:
                    raise DashboardError(ENDED, f"Subscription to {self.query} ended")
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
        return self.data

    # --- called by the client, in its reader -------------------------------------

    def _deliver(self, data: Any, *, initial: bool) -> None:
        self.data = data
        self.initial = initial
        self.updates += 1
        self._wake()
        if self.callback is None:
            return
        try:
            outcome = self.callback(data)
        except Exception:
            logger.exception("subscription callback for %s failed", self.query)
            return
        if inspect.isawaitable(outcome):
            self._queue.append(outcome)
            if self._runner is None or self._runner.done():
                self._runner = asyncio.create_task(self._run_callbacks())

    def _end(self, error: DashboardError | None) -> None:
        self.active = False
        self.error = error
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _cancel_callbacks(self) -> None:
        while self._queue:
            pending = self._queue.popleft()
            if inspect.iscoroutine(pending):
                pending.close()
        if self._runner is not None:
            self._runner.cancel()

    async def _run_callbacks(self) -> None:
        while self._queue:
            try:
                await self._queue.popleft()
            except Exception:
                logger.exception("subscription callback for %s failed", self.query)
