"""DashboardClient: the protocol over one WebSocket at a time, reconnecting
behind the user's back and failing loudly where a reconnect could hide a loss."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .backoff import Backoff
from .errors import ConnectionLost, DashboardError, RequestTimeout, SessionRevoked
from .subscriptions import Callback, Subscription

logger = logging.getLogger("dashboard_client")

# Close code the server uses after a `session_revoked` system frame.
CLOSE_SESSION_REVOKED = 4002
# A login refused with these codes will be refused again: stop reconnecting.
PERMANENT_LOGIN_CODES = frozenset({"UNAUTHORIZED", "FORBIDDEN", "VALIDATION_ERROR"})
# Results can be large (a 10,000-metric result is about 2 MB); the server
# bounds what it sends, not us.
MAX_INCOMING_BYTES = 256 * 1024 * 1024


@dataclass
class _Pending:
    future: asyncio.Future
    # Runs in the reader as the result arrives, before any later frame is
    # handled (a subscribe registers its id here, so no push can overtake it).
    on_result: Callable[[Any], None] | None = None


@dataclass(eq=False)
class _Connection:
    """One WebSocket: its reader and the requests waiting for a reply on it."""

    ws: ClientConnection
    welcome: dict[str, Any]
    pending: dict[int, _Pending] = field(default_factory=dict)
    reader: asyncio.Task | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str = ""


class DashboardClient:
    """An asyncio client of the dashboard protocol.

        async with DashboardClient("ws://127.0.0.1:8000/ws/", "admin-token") as c:
            record = await c.insert("metrics", {"name": "cpu", "value": 1, "timestamp": t})
            sub = await c.subscribe("metrics-by-name", {"name": "cpu"}, print)

    Entering connects, waits for the welcome and logs in (raising
    DashboardError or ConnectionLost if that fails). Every failed request
    raises DashboardError with the protocol's `code` and `message`.

    When the connection drops the client reconnects with exponential backoff
    (with jitter, capped), logs in again and makes every live subscription
    again; the Subscription objects and their callbacks carry on, and each
    gets the fresh initial result first. Requests made while reconnecting wait
    for the new connection (within `request_timeout`). A request in flight
    when the connection drops is treated by kind:
      - writes (insert, update, delete, clear, transaction, and `request`)
        raise ConnectionLost: the server may or may not have applied them, and
        the client never sends a write twice;
      - reads, subscribe, login/logout/whoami are idempotent and are sent once
        more on the new connection; a second drop raises ConnectionLost.
    The server's heartbeat pings are answered. A `session_revoked` notice (or
    close 4002) stops the client for good: pending and later requests raise
    SessionRevoked, and so does `wait_closed()`.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        request_timeout: float = 30.0,
        open_timeout: float = 10.0,
        wait_for_server: float = 0.0,
    ) -> None:
        """`token` None connects without logging in. `wait_for_server`: how
        long the first connection keeps retrying an unreachable server (0:
        fail at once)."""
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.open_timeout = open_timeout
        self.wait_for_server = wait_for_server
        self.welcome: dict[str, Any] | None = None
        self.session: dict[str, Any] | None = None
        # Counters, for logs, tests and operators.
        self.connections = 0
        self.pings_answered = 0
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._ready = False
        self._state = asyncio.Condition()
        self._subscriptions: list[Subscription] = []
        self._by_id: dict[str, Subscription] = {}
        self._supervisor: asyncio.Task | None = None
        self._terminal: DashboardError | None = None
        self._closing = False
        self._stop = asyncio.Event()  # set by close(): cuts a backoff wait short
        self._logged_in = token is not None

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> DashboardClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        """Opens the first connection and logs in; raises if that fails."""
        if self._supervisor is not None:
            raise RuntimeError("DashboardClient.connect() called twice")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_server
        while True:
            try:
                conn = await self._establish()
                break
            except (TimeoutError, OSError, InvalidHandshake, ConnectionLost) as error:
                if loop.time() >= deadline:
                    if isinstance(error, DashboardError):
                        raise
                    raise ConnectionLost(f"Could not connect to {self.url}: {error}") from error
                delay = min(self.backoff.next(), max(0.0, deadline - loop.time()))
                logger.info("server at %s not reachable (%s); retrying in %.1f s", self.url, error, delay)
                if await self._stopped_within(delay):
                    raise ConnectionLost("Client is closed") from error
        await self._became_ready(conn)
        self._supervisor = asyncio.create_task(self._supervise(conn), name="dashboard-client")

    async def close(self) -> None:
        """Closes the connection and stops reconnecting. Requests still
        waiting raise ConnectionLost."""
        self._closing = True
        self._stop.set()
        conn = self._conn
        if conn is not None:
            await conn.ws.close()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            # It returns once the connection is closed or its backoff wait is
            # cut short; a connection attempt under way is abandoned.
            done, _ = await asyncio.wait([supervisor], timeout=2.0)
            if not done:
                supervisor.cancel()
                await asyncio.wait([supervisor])
        self._end_subscriptions(None)
        async with self._state:
            self._state.notify_all()

    async def wait_closed(self) -> None:
        """Returns when the client has stopped: after `close()`, or when it
        stopped reconnecting, in which case it raises why (SessionRevoked,
        ConnectionLost when reconnect is off, a refused login)."""
        if self._supervisor is not None:
            await asyncio.shield(self._supervisor)
        if self._terminal is not None and not self._closing:
            raise self._terminal

    @property
    def connected(self) -> bool:
        return self._ready and self._conn is not None

    @property
    def in_flight(self) -> int:
        """Requests sent on the current connection and not answered yet."""
        conn = self._conn
        return len(conn.pending) if conn is not None else 0

    # --- auth ----------------------------------------------------------------------

    async def login(self, token: str | None = None) -> dict[str, Any]:
        """Logs in (again), with a new token if given; once that succeeds,
        later reconnects use it. A refused login changes nothing."""
        token = self.token if token is None else token
        session = await self._call("auth.login", {"token": token}, retry=True)
        self.token, self._logged_in, self.session = token, True, session
        return session

    async def logout(self) -> dict[str, Any]:
        """Ends the session; later reconnects stay logged out until `login()`."""
        self._logged_in = False
        self.session = None
        return await self._call("auth.logout", {}, retry=True)

    async def whoami(self) -> dict[str, Any]:
        return await self._call("auth.whoami", {}, retry=True)

    # --- writes: never sent twice ------------------------------------------------------

    async def insert(self, bucket: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._call("store.insert", {"bucket": bucket, "data": data}, retry=False)

    async def update(self, bucket: str, key: str, data: dict[str, Any]) -> dict[str, Any]:
        return await self._call("store.update", {"bucket": bucket, "key": key, "data": data}, retry=False)

    async def delete(self, bucket: str, key: str) -> dict[str, Any]:
        return await self._call("store.delete", {"bucket": bucket, "key": key}, retry=False)

    async def clear(self, bucket: str) -> dict[str, Any]:
        return await self._call("store.clear", {"bucket": bucket}, retry=False)

    async def transaction(self, operations: list[dict[str, Any]]) -> list[Any]:
        """Runs `[{"op": "insert", "bucket": "metrics", "data": {...}}, ...]`
        all or nothing; returns each operation's result data, in order."""
        data = await self._call("store.transaction", {"operations": operations}, retry=False)
        return [item["data"] for item in data["results"]]

    async def request(self, type: str, **fields: Any) -> Any:
        """Any operation by its protocol name; treated as a write (not retried)."""
        return await self._call(type, fields, retry=False)

    # --- reads: sent once more after a reconnect -------------------------------------------

    async def get(self, bucket: str, key: str) -> dict[str, Any] | None:
        return await self._read("store.get", bucket=bucket, key=key)

    async def all(self, bucket: str) -> list[dict[str, Any]]:
        return await self._read("store.all", bucket=bucket)

    async def where(self, bucket: str, filter: dict[str, Any]) -> list[dict[str, Any]]:
        return await self._read("store.where", bucket=bucket, filter=filter)

    async def find_one(self, bucket: str, filter: dict[str, Any]) -> dict[str, Any] | None:
        return await self._read("store.findOne", bucket=bucket, filter=filter)

    async def count(self, bucket: str, filter: dict[str, Any] | None = None) -> int:
        return await self._read("store.count", bucket=bucket, filter=filter)

    async def first(self, bucket: str, n: int) -> list[dict[str, Any]]:
        return await self._read("store.first", bucket=bucket, n=n)

    async def last(self, bucket: str, n: int) -> list[dict[str, Any]]:
        return await self._read("store.last", bucket=bucket, n=n)

    async def paginate(self, bucket: str, limit: int, after: str | None = None) -> dict[str, Any]:
        """`{"records", "hasMore", "nextCursor"}`; pass `nextCursor` as `after`."""
        return await self._read("store.paginate", bucket=bucket, limit=limit, after=after)

    async def sum(self, bucket: str, field: str, filter: dict[str, Any] | None = None) -> float:
        return await self._read("store.sum", bucket=bucket, field=field, filter=filter)

    async def avg(self, bucket: str, field: str, filter: dict[str, Any] | None = None) -> float:
        return await self._read("store.avg", bucket=bucket, field=field, filter=filter)

    async def min(self, bucket: str, field: str, filter: dict[str, Any] | None = None) -> float | None:
        return await self._read("store.min", bucket=bucket, field=field, filter=filter)

    async def max(self, bucket: str, field: str, filter: dict[str, Any] | None = None) -> float | None:
        return await self._read("store.max", bucket=bucket, field=field, filter=filter)

    async def buckets(self) -> dict[str, Any]:
        return await self._read("store.buckets")

    async def stats(self) -> dict[str, Any]:
        return await self._read("store.stats")

    async def _read(self, type: str, **fields: Any) -> Any:
        # Optional fields left as None are not sent ("after": null is refused).
        return await self._call(type, {k: v for k, v in fields.items() if v is not None}, retry=True)

    # --- subscriptions ------------------------------------------------------------------

    async def subscribe(
        self, query: str, params: dict[str, Any] | None = None, callback: Callback | None = None
    ) -> Subscription:
        """Subscribes to a named query. `callback(data)` is called with the
        initial result before this returns, then with every push, and with
        the fresh initial result after each reconnect."""
        subscription = Subscription(self, query, params, callback)
        await self._call(
            "store.subscribe",
            self._subscribe_fields(subscription),
            retry=True,
            on_result=lambda data: self._subscribed(subscription, data),
        )
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Ends a subscription: its callback is not called again."""
        subscription_id = subscription.id
        self._forget(subscription)
        subscription._end(None)
        if subscription_id is None or not self.connected:
            return  # nothing on the server: a new connection has no such subscription
        try:
            await self._call("store.unsubscribe", {"subscriptionId": subscription_id}, retry=False)
        except ConnectionLost:
            pass  # the server ends a dropped connection's subscriptions itself
        except DashboardError as error:
            if error.code != "NOT_FOUND":
                raise

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    def _subscribe_fields(self, subscription: Subscription) -> dict[str, Any]:
        fields: dict[str, Any] = {"query": subscription.query}
        if subscription.params is not None:
            fields["params"] = subscription.params
        return fields

    def _subscribed(self, subscription: Subscription, data: dict[str, Any]) -> None:
        # Runs in the reader: the id is known before the first push is read.
        subscription.id = data["subscriptionId"]
        subscription.active = True
        self._by_id[subscription.id] = subscription
        if subscription not in self._subscriptions:
            self._subscriptions.append(subscription)
        subscription._deliver(data["data"], initial=True)

    def _forget(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        if subscription.id is not None and self._by_id.get(subscription.id) is subscription:
            del self._by_id[subscription.id]

    # --- requests -----------------------------------------------------------------------

    async def _call(
        self, type: str, fields: dict[str, Any], *, retry: bool, on_result: Callable[[Any], None] | None = None
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            conn = await self._wait_ready(deadline, type)
            try:
                return await self._send(conn, type, fields, on_result, deadline)
            except ConnectionLost:
                if attempt + 1 == attempts or self._terminal is not None or self._closing:
                    raise
                logger.info("%s in flight when the connection dropped; sending it again", type)
        raise AssertionError("unreachable")

    async def _wait_ready(self, deadline: float, type: str) -> _Connection:
        loop = asyncio.get_running_loop()
        async with self._state:
            while True:
                if self._terminal is not None:
                    raise self._terminal
                if self._closing:
                    raise ConnectionLost("Client is closed")
                if self._ready and self._conn is not None:
                    return self._conn
                remaining = deadline - loop.time()
                if remaining <= 0:
                    # Never sent: certainly not applied.
                    raise ConnectionLost(
                        f"{type} not sent: no connection to {self.url} within {self.request_timeout} s"
                    )
                try:
                    await asyncio.wait_for(self._state.wait(), remaining)
                except TimeoutError:
                    pass

    async def _send(
        self,
        conn: _Connection,
        type: str,
        fields: dict[str, Any],
        on_result: Callable[[Any], None] | None,
        deadline: float,
    ) -> Any:
        request_id = next(self._ids)
        try:
            text = json.dumps({"id": request_id, "type": type, **fields}, separators=(",", ":"), allow_nan=False)
        except ValueError as error:  # NaN or infinity: not JSON, and refused by the server anyway
            raise DashboardError("VALIDATION_ERROR", f"Request is not valid JSON: {error}") from None
        future = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = _Pending(future, on_result)
        try:
            if conn.closed.is_set():
                raise ConnectionLost()
            try:
                await conn.ws.send(text)
            except ConnectionClosed:
                raise ConnectionLost() from None
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.001))
            except TimeoutError:
                raise RequestTimeout(f"No reply to {type} within {self.request_timeout} s") from None
        finally:
            conn.pending.pop(request_id, None)

    # --- connections ----------------------------------------------------------------------

    async def _establish(self) -> _Connection:
        """Connects, reads the welcome, starts the reader, logs in and makes the
        live subscriptions again. Raises on failure, leaving nothing open."""
        ws = await connect(
            self.url,
            open_timeout=self.open_timeout,
            max_size=MAX_INCOMING_BYTES,
            compression=None,
            close_timeout=2,
        )
        try:
            text = await asyncio.wait_for(ws.recv(), self.open_timeout)
            try:
                welcome = json.loads(text)
            except ValueError:
                welcome = None
            if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
                raise ConnectionLost(f"Expected a welcome frame, got {text[:200]!r}")
        except ConnectionClosed as error:
            await ws.close()
            raise ConnectionLost(f"Connection closed before the welcome: {error}") from None
        except BaseException:
            await ws.close()
            raise
        conn = _Connection(ws=ws, welcome=welcome)
        conn.reader = asyncio.create_task(self._read_frames(conn), name="dashboard-client-reader")
        self.connections += 1
        self.welcome = welcome
        self._by_id.clear()
        try:
            await self._handshake(conn)
        except BaseException:
            await ws.close()
            await conn.closed.wait()
            raise
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        if self._logged_in and self.token is not None:
            try:
                self.session = await self._send(conn, "auth.login", {"token": self.token}, None, deadline)
            except DashboardError as error:
                if error.code in PERMANENT_LOGIN_CODES:
                    self._terminal = error
                raise
        for subscription in list(self._subscriptions):
            try:
                await self._send(
                    conn,
                    "store.subscribe",
                    self._subscribe_fields(subscription),
                    partial(self._resubscribed, subscription),
                    deadline,
                )
            except (ConnectionLost, RequestTimeout):
                raise
            except DashboardError as error:
                logger.warning(
                    "subscription %s %s refused after reconnecting: %s",
                    subscription.query,
                    subscription.params or {},
                    error,
                )
                self._forget(subscription)
                subscription._end(error)

    def _resubscribed(self, subscription: Subscription, data: dict[str, Any]) -> None:
        if subscription not in self._subscriptions:
            return  # unsubscribed meanwhile; the server drops it with the next connection
        subscription.resubscriptions += 1
        self._subscribed(subscription, data)

    async def _became_ready(self, conn: _Connection) -> None:
        self.backoff.reset()
        async with self._state:
            self._conn = conn
            self._ready = True
            self._state.notify_all()

    async def _supervise(self, conn: _Connection) -> None:
        """Owns the connection: waits for it to drop, then reconnects."""
        try:
            await self._supervise_connections(conn)
        except Exception as error:
            # Never leave callers waiting on a client that no longer runs.
            logger.exception("client supervisor failed")
            if self._terminal is None:
                self._terminal = ConnectionLost(f"Client failed: {error!r}")
        finally:
            if self._terminal is not None and not self._closing:
                self._end_subscriptions(self._terminal)
            async with self._state:
                self._ready = False
                self._conn = None
                self._state.notify_all()

    async def _supervise_connections(self, conn: _Connection) -> None:
        while True:
            await conn.closed.wait()
            async with self._state:
                self._ready = False
                self._conn = None
                self._state.notify_all()
            if self._closing or self._terminal is not None:
                return
            if not self.reconnect:
                self._terminal = ConnectionLost(f"Connection closed (close code {conn.close_code}); reconnect is off")
                return
            logger.warning(
                "connection to %s lost (close code %s%s); reconnecting",
                self.url,
                conn.close_code,
                f", {conn.close_reason}" if conn.close_reason else "",
            )
            new_conn = await self._reconnect()
            if new_conn is None:
                return
            conn = new_conn
            await self._became_ready(conn)
            logger.info("reconnected to %s; %d subscription(s) restored", self.url, len(self._subscriptions))

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def _end_subscriptions(self, error: DashboardError | None) -> None:
        for subscription in self._subscriptions:
            subscription._end(error)
            subscription._cancel_callbacks()
        self._subscriptions.clear()
        self._by_id.clear()

    async def _reconnect(self) -> _Connection | None:
        while not self._closing and self._terminal is None:
            if await self._stopped_within(self.backoff.next()):
                return None
            try:
                conn = await self._establish()
            except (TimeoutError, OSError, InvalidHandshake) as error:
                logger.info("reconnecting to %s failed: %s", self.url, error)
                continue
            except DashboardError as error:
                if self._terminal is not None:
                    logger.error("reconnected to %s but gave up: %s", self.url, error)
                    return None
                logger.info("reconnecting to %s failed: %s", self.url, error)
                continue
            except Exception:
                logger.exception("reconnecting to %s failed", self.url)
                continue
            if self._closing:
                await conn.ws.close()
                return None
            return conn
        return None

    # --- incoming frames ---------------------------------------------------------------------

    async def _read_frames(self, conn: _Connection) -> None:
        try:
            async for text in conn.ws:
                if isinstance(text, bytes):
                    logger.warning("ignoring a binary frame")
                    continue
                try:
                    frame = json.loads(text)
                except ValueError:
                    logger.warning("ignoring a frame that is not JSON: %.200s", text)
                    continue
                if isinstance(frame, dict):
                    await self._handle(conn, frame)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("reader failed; dropping the connection")
            await conn.ws.close()
        finally:
            conn.close_code = conn.ws.close_code
            conn.close_reason = conn.ws.close_reason or ""
            if conn.close_code == CLOSE_SESSION_REVOKED and self._terminal is None:
                self._terminal = SessionRevoked(conn.close_reason or "session_revoked")
            lost = self._terminal if isinstance(self._terminal, SessionRevoked) else ConnectionLost()
            for pending in conn.pending.values():
                if not pending.future.done():
                    pending.future.set_exception(lost)
            conn.pending.clear()
            conn.closed.set()

    async def _handle(self, conn: _Connection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "push":
            # The id map holds this connection's ids only (it is rebuilt on
            # each reconnect), so a push is never taken for another's.
            subscription_id = frame.get("subscriptionId")
            subscription = self._by_id.get(subscription_id) if isinstance(subscription_id, str) else None
            if subscription is not None:
                subscription._deliver(frame.get("data"), initial=False)
        elif kind in ("result", "error"):
            request_id = frame.get("id")
            pending = conn.pending.get(request_id) if isinstance(request_id, int) else None
            if pending is None:
                if kind == "error":
                    logger.warning("server error not tied to a request: %s %s", frame.get("code"), frame.get("message"))
                return
            if pending.future.done():
                return  # timed out already
            if kind == "result":
                try:
                    if pending.on_result is not None:
                        pending.on_result(frame.get("data"))
                except Exception as error:  # a malformed reply: fail that request only
                    pending.future.set_exception(error)
                else:
                    pending.future.set_result(frame.get("data"))
            else:
                pending.future.set_exception(
                    DashboardError(frame.get("code", ""), frame.get("message", ""), frame.get("details"))
                )
        elif kind == "ping":
            try:
                await conn.ws.send(json.dumps({"type": "pong", "timestamp": frame.get("timestamp")}))
                self.pings_answered += 1
            except ConnectionClosed:
                pass
        elif kind == "system":
            event = frame.get("event")
            if event == "session_revoked":
                reason = frame.get("reason") or "session_revoked"
                logger.error("session revoked by the server: %s", reason)
                self._terminal = SessionRevoked(reason)
            elif event == "shutdown":
                logger.info("server shutting down (grace %s ms); will reconnect", frame.get("gracePeriodMs"))
            else:
                logger.info("system notice: %s", frame)
        elif kind != "welcome":
            logger.debug("ignoring frame of type %r", kind)
