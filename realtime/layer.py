"""The process's link to the channel layer: one group every server process
joins, a receive loop, and probes that notice when messages stop arriving.

Only small messages cross it (bucket names, a few keys, token ids, numbers).
A message this process sends is handled here at once (no layer round trip,
and it still works while the layer is down) and ignored when it comes back.
What the messages mean is the hub's business: the link hands each one to
`on_message`, and calls `on_resync` when probes return after an outage
(changes from other processes may have been lost meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from telemetry import instruments

logger = logging.getLogger(__name__)

CHANGES_GROUP = "dashboard.changes"
PROBE_MESSAGE = "hub.probe"
# Tells this process's messages from the others' on the shared group.
PROCESS_ID = uuid.uuid4().hex[:16]
# Re-join the group well before the layer's group expiry could drop us.
GROUP_REFRESH_SECONDS = 3600

Message = dict[str, Any]


class LayerLink:
    def __init__(
        self, layer: Any, on_message: Callable[[Message], None], on_resync: Callable[[], None], probe_seconds: float
    ) -> None:
        self.layer = layer
        self._on_message = on_message
        self._on_resync = on_resync
        self._probe_seconds = probe_seconds
        self.channel_name: str | None = None
        self.healthy = True
        self.failures = 0
        self.resyncs = 0
        self._probes_sent = 0
        self._probe_returned = 0

    async def join(self) -> list[asyncio.Task]:
        """Joins the group; returns the link's tasks (the caller owns them)."""
        self.channel_name = await self.layer.new_channel("dashboard.hub.")
        await self.layer.group_add(CHANGES_GROUP, self.channel_name)
        return [
            asyncio.create_task(self._receive(), name="layer-receive"),
            asyncio.create_task(self._refresh_group(), name="layer-refresh"),
            asyncio.create_task(self._probe(), name="layer-probe"),
        ]

    def send(self, message: Message) -> None:
        """Handles a message of this process here and sends it to the others."""
        message = {**message, "origin": PROCESS_ID}
        self._on_message(message)
        task = asyncio.ensure_future(self.layer.group_send(CHANGES_GROUP, message))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed("could not publish a message to the channel layer", task.exception())

    async def _receive(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive failed; retrying")
                await asyncio.sleep(1)
                continue
            if message.get("origin") == PROCESS_ID:
                # Handled when it was sent; a probe comes back.
                if message.get("type") == PROBE_MESSAGE:
                    self._probe_came_back(message.get("n", 0))
                continue
            self._on_message(message)

    async def _refresh_group(self) -> None:
        # Channel layers expire group membership; a long-running server must
        # never silently stop receiving.
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            try:
                await self.layer.group_add(CHANGES_GROUP, self.channel_name)
            except Exception:
                logger.exception("could not refresh the change group membership")

    async def _probe(self) -> None:
        """Sends this process a message through the layer every few seconds.
        If one does not come back in time, changes from other processes may
        have been lost too; when probes return, `on_resync` is called."""
        while True:
            await asyncio.sleep(self._probe_seconds)
            if self._probes_sent > self._probe_returned:
                instruments.LAYER_PROBE_FAILURES.inc()
                self._failed("a layer probe did not come back", None)
            self._probes_sent += 1
            try:
                await self.layer.group_send(
                    CHANGES_GROUP, {"type": PROBE_MESSAGE, "origin": PROCESS_ID, "n": self._probes_sent}
                )
            except Exception as error:
                instruments.LAYER_PROBE_FAILURES.inc()
                self._failed("could not send a layer probe", error)

    def _probe_came_back(self, n: int) -> None:
        self._probe_returned = max(self._probe_returned, n)
        if not self.healthy and n == self._probes_sent:
            self.healthy = True
            self.resyncs += 1
            logger.warning("channel layer is back: re-evaluating every live query")
            self._on_resync()

    def _failed(self, what: str, error: BaseException | None) -> None:
        self.failures += 1
        if self.healthy:
            self.healthy = False
            logger.error("%s: pushes from other processes may be missed until it recovers", what, exc_info=error)
