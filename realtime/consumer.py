"""The WebSocket consumer: parses frames, routes them through the action
table, and writes replies and pushes through one ordered outbox."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from metrics.models import now_ms
from telemetry import instruments

from . import frames, shutdown, wire
from .actions import ACTIONS, BATCHED, Context, Encoded, client_address
from .auth import Session
from .errors import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_LOGIN_TIMEOUT,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SESSION_REVOKED,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNSUPPORTED_DATA,
    FORBIDDEN,
    INTERNAL_ERROR,
    RATE_LIMITED,
    UNAUTHORIZED,
    UNKNOWN_OPERATION,
    ProtocolError,
    StoreError,
)
from .hub import Hub, get_hub
from .live import Subscription
from .outbox import Outbox
from .permissions import is_allowed

logger = logging.getLogger(__name__)

# Subscription ids are unique within the process, so one connection can never
# name another's subscription by accident.
_subscription_ids = itertools.count(1)

# Requests read but not yet answered, before the socket stops being read:
# at most this many, and this many characters of their frames.
INBOX_LIMIT = 256
INBOX_CHARS_LIMIT = 4 * 1024 * 1024
# Pipelined requests of one kind answered in one database hop.
MAX_BATCH = 64


class DashboardConsumer(AsyncWebsocketConsumer):
    # Set in connect(), before any frame is read or written.
    hub: Hub
    outbox: Outbox

    # No per-consumer channel-layer channel: changes reach consumers through
    # the process's hub, never through one layer message per viewer.
    channel_layer_alias = "__dashboard_no_layer__"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: Session | None = None
        self.subscriptions: dict[str, Subscription] = {}
        self.inbox: collections.deque[frames.Request | str] = collections.deque()
        # The frame length of each inbox item, and their sum.
        self.inbox_sizes: collections.deque[int] = collections.deque()
        self.inbox_chars = 0
        self.inbox_has_room = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.closed = False
        self.awaiting_pong = False
        self.login_timer: asyncio.TimerHandle | None = None
        # Close tasks started from synchronous callbacks, kept until done.
        self._tasks: set[asyncio.Future] = set()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections in a thread hop before every
        # message; our database work already does that in the database thread
        # (database_sync_to_async), so the extra hop per frame is skipped.
        handler = {
            "websocket.connect": self.websocket_connect,
            "websocket.receive": self.websocket_receive,
            "websocket.disconnect": self.websocket_disconnect,
        }.get(message["type"])
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # --- connection lifecycle ------------------------------------------------

    async def connect(self) -> None:
        self.hub = get_hub()
        await self.hub.start()
        await self.accept()
        limits = settings.DASHBOARD
        self.outbox = Outbox(
            self.base_send,
            limits["MAX_OUTBOX_BYTES"],
            self._outbox_overflow,
            wire.frame_writer(self.base_send),
            self.hub.outbox_ledger,
        )
        if shutdown.shutting_down:
            await self.close_with(CLOSE_GOING_AWAY, "server_shutting_down")
            return
        address = client_address(self.scope)
        if not self.hub.connections.admit(
            self, address, limits["MAX_CONNECTIONS_PER_ADDRESS"], limits["MAX_UNAUTHENTICATED_PER_ADDRESS"]
        ):
            await self.close_with(CLOSE_TOO_MANY_CONNECTIONS, "too_many_connections")
            return
        deadline = limits["LOGIN_DEADLINE_SECONDS"]
        if deadline > 0:
            self.login_timer = asyncio.get_running_loop().call_later(deadline, self._login_overdue)
        self.enqueue(frames.welcome_frame(now_ms()))

    def _login_overdue(self) -> None:
        # Connections that never log in would otherwise hold a slot of their
        # address (and memory) until the client goes away.
        self.login_timer = None
        if not self.closed:
            self._closing(self.close_with(CLOSE_LOGIN_TIMEOUT, "login_timeout"))

    def start_session(self, session: Session) -> None:
        """A successful auth.login (again, possibly as another user)."""
        self.session = session
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None
        self.hub.connections.logged_in(self)
        self.outbox.set_user(session.user_id)
        self._catch_up()

    def end_session(self) -> None:
        self.session = None

    def _outbox_overflow(self) -> None:
        # Coalescing already keeps one push per subscription: a client this
        # far behind is not reading. Free its frames and close it.
        logger.warning("closing a connection whose client does not read (%d bytes waiting)", self.outbox.queued)
        instruments.SLOW_CONSUMER_CLOSES.inc()
        self.outbox.close()
        self._closing(self.close_with(CLOSE_POLICY_VIOLATION, "slow_consumer"))

    async def disconnect(self, code: int) -> None:
        self.release()

    def release(self) -> None:
        """Ends the connection's subscriptions and drops what it has not sent."""
        self.closed = True
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None
        if hasattr(self, "hub"):  # set in connect()
            for subscription in self.subscriptions.values():
                self.hub.queries.unsubscribe(subscription)
            self.hub.connections.release(self)
        self.subscriptions.clear()
        self.inbox.clear()
        self.inbox_sizes.clear()
        self.inbox_chars = 0
        if self.worker is not None:
            self.worker.cancel()
        if hasattr(self, "outbox"):
            self.outbox.close()

    async def close_with(self, code: int, reason: str) -> None:
        if not self.closed:
            self.release()
            await self.close(code=code, reason=reason)

    def revoke(self, reason: str) -> None:
        """The session's token was revoked or its user deactivated: say why,
        then close with 4002."""
        if self.closed:
            return
        self.session = None
        self.enqueue(frames.system_frame("session_revoked", reason=reason))
        self._closing(self.close_after_outbox(CLOSE_SESSION_REVOKED, "session_revoked"))

    def _closing(self, close: Any) -> None:
        """Runs a close started from synchronous code (a timer, the hub)
        as a task this connection keeps until it is done."""
        task = asyncio.ensure_future(close)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_after_outbox(self, code: int, reason: str) -> None:
        """Closes once every queued frame has gone out (a slow reader gets a
        bounded wait, then the close)."""
        await self.outbox.flushed(timeout=2.0)
        await self.close_with(code, reason)

    def heartbeat_tick(self, now_ms: int) -> None:
        """Called by the hub every interval: ping, or close if the last ping
        went unanswered."""
        if self.closed:
            return
        if self.awaiting_pong:
            self._closing(self.close_with(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat_timeout"))
            return
        self.awaiting_pong = True
        self.enqueue(frames.ping_frame(now_ms))

    # --- incoming frames -----------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        text = message.get("text")
        if text is None:
            await self.close_with(CLOSE_UNSUPPORTED_DATA, "binary_not_supported")
            return
        limit = settings.DASHBOARD["MAX_FRAME_BYTES"]
        if len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit:
            await self.close_with(CLOSE_TOO_BIG, "message_too_large")
            return
        try:
            request = frames.parse(text)
        except ProtocolError as error:
            item: frames.Request | str = frames.error_frame(0, error.code, error.message)
        else:
            if isinstance(request, frames.Pong):
                self.awaiting_pong = False
                return
            item = request  # a Request, or a refusal's finished error frame (a str)
        self.inbox.append(item)
        self.inbox_sizes.append(len(text))
        self.inbox_chars += len(text)
        # Requests are answered in order by one worker; frames read while it
        # waits on the database queue up here, which lets it run pipelined
        # inserts in one database hop.
        if self.worker is None:
            self.worker = asyncio.create_task(self._work())
        elif not self._inbox_has_room():
            # Backpressure: stop reading the socket until the worker catches up.
            self.inbox_has_room.clear()
            await self.inbox_has_room.wait()

    def _inbox_has_room(self) -> bool:
        return len(self.inbox) < INBOX_LIMIT and self.inbox_chars < INBOX_CHARS_LIMIT

    def _take(self) -> Any:
        self.inbox_chars -= self.inbox_sizes.popleft()
        return self.inbox.popleft()

    async def _work(self) -> None:
        inbox = self.inbox
        try:
            while inbox and not self.closed:
                item = self._take()
                if isinstance(item, str):
                    self.enqueue(item)
                elif item.type in BATCHED:
                    batch = [item]
                    while (
                        inbox
                        and len(batch) < MAX_BATCH
                        and isinstance(inbox[0], frames.Request)
                        and inbox[0].type == item.type
                    ):
                        batch.append(self._take())
                    await self._answer_batch(batch)
                else:
                    await self._answer(item)
                if self._inbox_has_room():
                    self.inbox_has_room.set()
        finally:
            self.worker = None
            self.inbox_has_room.set()

    async def _answer(self, request: frames.Request) -> None:
        try:
            handler = self.authorize(request)
            outcome = await handler(Context(self, request.type, request.body))
        except Exception as error:
            # Replied from here: a local holding the error would make a cycle
            # (error -> traceback -> this frame) that keeps the request's body
            # alive until the garbage collector runs.
            self.reply(request, error)
            return
        self.reply(request, outcome)

    async def _answer_batch(self, batch: list[frames.Request]) -> None:
        contexts: list[Context | Exception] = []
        for request in batch:
            try:
                self.authorize(request)
                contexts.append(Context(self, request.type, request.body))
            except StoreError as error:
                contexts.append(error.with_traceback(None))  # its code and message are all a reply needs
            except Exception as error:
                contexts.append(error)
        ready = [c for c in contexts if isinstance(c, Context)]
        try:
            outcomes = iter(await BATCHED[batch[0].type](ready) if ready else [])
        except Exception as error:
            outcomes = iter([error] * len(ready))
        for request, context in zip(batch, contexts, strict=False):
            self.reply(request, context if isinstance(context, Exception) else next(outcomes))

    def reply(self, request: frames.Request, outcome: Any) -> None:
        """Sends the result or error frame for a request (one error path)."""
        if isinstance(outcome, StoreError):
            self.enqueue(frames.error_frame(request.id, outcome.code, outcome.message, outcome.details))
        elif isinstance(outcome, Exception):
            logger.error("request %r failed", request.type, exc_info=outcome)
            self.enqueue(frames.error_frame(request.id, INTERNAL_ERROR, "Internal server error"))
        else:
            data_json = outcome if isinstance(outcome, Encoded) else frames.encode(outcome)
            self.enqueue(frames.result_frame(request.id, data_json))

    def authorize(self, request: frames.Request) -> Any:
        """The request's handler, after the reference's order of checks:
        authentication, then permission, then routing (so an unauthenticated
        client learns nothing about operation names)."""
        operation = request.type
        if not operation.startswith("auth.") and operation not in SESSIONLESS:
            session = self.current_session()
            resource = resource_of(operation, request.body)
            if not is_allowed(session, operation, resource):
                raise ProtocolError(FORBIDDEN, f"No permission for {operation} on {resource}")
            limiter = self.hub.connections.request_limiter()
            retry_after = limiter.retry_after_ms(session.user_id) if limiter is not None else 0
            if retry_after:
                raise ProtocolError(
                    RATE_LIMITED, f"Rate limit exceeded. Retry after {retry_after}ms", {"retryAfterMs": retry_after}
                )
        handler = ACTIONS.get(operation)
        if handler is None:
            raise ProtocolError(UNKNOWN_OPERATION, unknown_operation_message(operation))
        return handler

    def current_session(self) -> Session:
        session = self.session
        if session is None:
            raise ProtocolError(UNAUTHORIZED, "Authentication required")
        if session.expired():
            self.session = None
            raise ProtocolError(UNAUTHORIZED, "Session expired")
        return session

    # --- subscriptions ---------------------------------------------------------

    def next_subscription_id(self) -> str:
        return f"sub-{next(_subscription_ids)}"

    def register(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.subscription_id] = subscription

    def unsubscribe(self, subscription_id: str) -> bool:
        subscription = self.subscriptions.pop(subscription_id, None)
        if subscription is None:
            return False
        self.hub.queries.unsubscribe(subscription)
        self.outbox.drop(subscription_id)
        return True

    def may_receive(self, subscription: Subscription) -> bool:
        """Permission checked again before delivery: sessions change and expire.

        The answer is remembered per session object, since a push goes to
        every viewer on every change and the rule only sees the session.
        """
        session = self.session
        if session is None or (session.expires_at is not None and session.expired()):
            return False
        if subscription.allowed_for is not session:
            if not is_allowed(session, "store.subscribe", subscription.live.query.name):
                return False
            subscription.allowed_for = session
        return True

    # --- outgoing frames ----------------------------------------------------------

    def enqueue(self, frame: str) -> None:
        self.outbox.reply(frame)

    def deliver_push(self, subscription: Subscription, body: tuple[str, ...], body_utf8: tuple[bytes, ...]) -> bool:
        """Called by the hub for every push; never awaits, so fan-out never
        waits on a client. The common case (same session as last time, no
        expiry) is checked inline: this runs once per viewer per change.
        False when the push was not queued (no session may receive it)."""
        if self.closed:
            return False
        session = self.session
        if (
            session is None or session is not subscription.allowed_for or session.expires_at is not None
        ) and not self.may_receive(subscription):
            return False
        self.outbox.push(subscription.subscription_id, subscription.frame_prefix, body, body_utf8)
        return True

    def _catch_up(self) -> None:
        """After a login, each subscription whose pushes were held back (no
        session, or one that could not read it) gets the latest result."""
        for subscription in self.subscriptions.values():
            latest = subscription.live.last_json
            if (
                latest is not None
                and subscription.last_json != latest
                and self.deliver_push(subscription, (latest, "}"), (latest.encode(), b"}"))
            ):
                subscription.last_json = latest


# Types the reference routes without a session (and then finds no handler for).
SESSIONLESS = frozenset({"ping"})

RESOURCE_FIELDS = {"store.subscribe": "query", "store.unsubscribe": "subscriptionId"}


def resource_of(operation: str, body: dict[str, Any]) -> str:
    """What the permission check is asked about (docs/protocol.md, Auth)."""
    if not operation.startswith("store."):
        return "*"
    value = body.get(RESOURCE_FIELDS.get(operation, "bucket"))
    return value if isinstance(value, str) else "*"


def unknown_operation_message(operation: str) -> str:
    if operation.startswith("store."):
        return f'Unknown store operation "{operation}"'
    if operation.startswith("auth."):
        return f'Unknown auth operation "{operation}"'
    return f'Unknown operation "{operation}"'
