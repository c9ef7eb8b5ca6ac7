"""A connection's outgoing frames: replies in order, pushes coalesced.

Frames go out at once when nothing is queued: written to the socket directly
under the pinned uvicorn while the connection is open and nothing waits in the
server (realtime/wire.py), else handed to the ASGI server's `send` without a
task switch: a send that completes without suspending (daphne always, uvicorn
while the socket is writable) costs one function call. A send that does
suspend (a slow reader) is finished by a drain task, and everything after it
queues behind it. While a push for a subscription is still queued, a newer
result replaces it, so a slow client holds at most one pending push per
subscription and always gets the latest state.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from telemetry import instruments

from .quotas import OutboxLedger

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class PushSlot:
    __slots__ = ("frame", "key")

    def __init__(self, key: str, frame: str) -> None:
        self.key = key
        self.frame = frame


class _Resume:
    """Awaitable that finishes a coroutine already started by hand: it hands
    the future the coroutine is waiting on to the task awaiting it."""

    def __init__(self, coroutine: Any, waiting_on: Any) -> None:
        self.coroutine = coroutine
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        waiting_on = self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as error:  # cancellation included
                try:
                    waiting_on = self.coroutine.throw(error)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = self.coroutine.send(sent)
                except StopIteration:
                    return


class Outbox:
    def __init__(
        self,
        send: Send,
        max_bytes: int,
        on_overflow: Callable[[], None],
        write: Callable[..., bool] | None = None,
        ledger: OutboxLedger | None = None,
    ) -> None:
        self.asgi_send = send
        # realtime/wire.py: writes a frame (text, then already encoded bytes)
        # without the ASGI call when it can; None when the server's `send`
        # must carry every frame.
        self.writer = write
        self._queue: collections.deque[str | PushSlot] = collections.deque()
        self._pushes: dict[str, PushSlot] = {}
        self._drain: asyncio.Task | None = None
        self.closed = False
        # What waits for a slow reader, in characters (bytes for ASCII JSON).
        self.queued = 0
        self.max_bytes = max_bytes
        self._on_overflow = on_overflow
        self.overflowed = False
        # The per-user and per-process budgets (realtime/quotas.py).
        self._ledger = ledger
        self.user: str | None = None
        self.progress_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def waiting_on_send(self) -> bool:
        """A frame is held by the ASGI `send` (a slow reader); later ones queue."""
        return self._drain is not None

    def reply(self, frame: str) -> None:
        if self.closed:
            return
        if self._drain is None and not self._queue:
            self._send_now(frame)
        else:
            self._queue.append(frame)
            self._grew(len(frame))

    def push(self, key: str, prefix: str, body: tuple[str, ...], body_utf8: tuple[bytes, ...]) -> None:
        """Queues the push frame `prefix` + `body`. The body (the result and
        the frame's closing brace) is shared by every subscriber of the query
        and comes encoded once, so a direct write encodes only the prefix;
        the text is joined only when the frame has to wait or go through
        `send`."""
        if self._drain is None and not self._queue:
            # Nothing waits (so no older push for this key either): send now.
            if not self.closed:
                write = self.writer
                if write is None or not write(prefix, *body_utf8):
                    self._send_asgi(prefix + "".join(body))
            return
        if self.closed:
            return
        frame = prefix + "".join(body)
        slot = self._pushes.get(key)
        if slot is not None:
            # Not sent yet: only the newest result matters.
            instruments.COALESCED_PUSHES.inc()
            self._grew(len(frame) - len(slot.frame))
            slot.frame = frame
        else:
            slot = self._pushes[key] = PushSlot(key, frame)
            self._queue.append(slot)
            self._grew(len(frame))

    def _grew(self, size: int) -> None:
        self._count(size)
        if self.queued > self.max_bytes and not self.closed and not self.overflowed:
            self.overflow()

    def _count(self, delta: int) -> None:
        self.queued += delta
        if self._ledger is not None:
            self._ledger.grew(self, delta)

    def overflow(self) -> None:
        """The client does not read: free its frames and have it closed."""
        if not self.overflowed:
            self.overflowed = True
            self._on_overflow()

    def set_user(self, user: str | None) -> None:
        old, self.user = self.user, user
        if self._ledger is not None and old != user:
            self._ledger.moved(self, old)

    def drop(self, key: str) -> None:
        """Forgets a queued push (the subscription ended)."""
        slot = self._pushes.pop(key, None)
        if slot is not None:
            self._count(-len(slot.frame))
            slot.frame = ""

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._pushes.clear()
        self._count(-self.queued)
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None

    async def flushed(self, timeout: float) -> bool:
        """Waits until everything queued has been handed to the server."""
        drain = self._drain
        if drain is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(drain), timeout)
        except (TimeoutError, asyncio.CancelledError):
            return False
        return self._drain is None and not self._queue

    def _send_now(self, frame: str) -> None:
        write = self.writer
        if write is None or not write(frame):
            self._send_asgi(frame)

    def _send_asgi(self, frame: str) -> None:
        awaitable = self.asgi_send({"type": "websocket.send", "text": frame})
        if not inspect.iscoroutine(awaitable):
            # ASGI promises an awaitable, not a coroutine (a Future, an eager
            # task, an object with __await__): the drain task awaits it.
            self._drain = asyncio.ensure_future(self._finish(awaitable))
            return
        # A coroutine (uvicorn's, daphne's) is started here: when it does not
        # suspend, the frame is sent without a task switch.
        try:
            waiting_on = awaitable.send(None)
        except StopIteration:
            return
        except Exception as error:
            self._failed(error)
            return
        self._drain = asyncio.ensure_future(self._finish(_Resume(awaitable, waiting_on)))

    async def _finish(self, pending: Awaitable[Any]) -> None:
        try:
            await pending
            self.progress_at = time.monotonic()
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, PushSlot):
                    if self._pushes.get(item.key) is item:
                        del self._pushes[item.key]
                    if not item.frame:
                        continue
                    item = item.frame
                self._count(-len(item))
                await self.asgi_send({"type": "websocket.send", "text": item})
                self.progress_at = time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._failed(error)
        finally:
            self._drain = None

    def _failed(self, error: Exception) -> None:
        """A send raised: nothing more can go out on this connection. A client
        that went away is ordinary (the consumer's disconnect() cleans up);
        anything else is logged, never dropped silently."""
        if isinstance(error, (ConnectionError, OSError)) or self.closed:
            logger.debug("send failed on a closing connection", exc_info=error)
        else:
            logger.warning("sending a frame failed; closing the connection's outbox", exc_info=error)
        self.close()
