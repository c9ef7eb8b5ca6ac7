"""Per-process fan-out of store changes to live subscriptions.

Each server process runs one Hub. After a commit, `publish_change` tells the
local hub directly and sends one small message (bucket names and at most a
few keys) to the channel-layer group that every process's hub joins once;
hubs ignore their own process's messages. A hub re-evaluates each distinct
(query, params) its own clients subscribe to, once, encodes each result once,
and hands the ready push frame to the subscriptions whose last result
differs. Channel-layer traffic per change is one message, whatever the number
of viewers (see docs/fanout.md for the design and costs).

Changes that arrive while an evaluation runs are merged into the next one,
so under a burst a subscription may skip intermediate results but always gets
the result after the last change (the protocol's latest-state guarantee).
Because every evaluation reads the database, a lost layer message delays a
push but never corrupts one: each hub probes the layer with its own messages
and, when they stop coming back, re-evaluates everything once they return.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import connections
from django.utils.module_loading import import_string

from .frames import encode, push_frame_prefix
from .limits import RequestLimiter
from .quotas import LiveQueryQuota, OutboxLedger
from .queries import QueryDef, QueryStore

if TYPE_CHECKING:
    from .consumer import DashboardConsumer

logger = logging.getLogger(__name__)

CHANGES_GROUP = "dashboard.changes"
CHANGED_MESSAGE = "store.changed"
PROBE_MESSAGE = "hub.probe"
REVOKED_MESSAGE = "session.revoked"
# Tells this process's messages from the others' on the shared group.
PROCESS_ID = uuid.uuid4().hex[:16]
# Re-join the group well before the layer's group expiry could drop us.
GROUP_REFRESH_SECONDS = 3600
DEFAULT_TOKEN_VALIDATOR = "accounts.tokens.validate_token"
DEFAULT_TOKEN_RECHECK = "accounts.tokens.invalid_among"
# How often to look for results that time made stale (sliding windows,
# whose finest step is 1 s).
REFRESH_TICK_SECONDS = 0.25


def publish_change(sender: Any, changes: dict[str, list[str] | None], **kwargs: Any) -> None:
    """`records_changed` receiver: runs in the committing thread, after commit."""
    _broadcast({"type": CHANGED_MESSAGE, "changes": changes, "origin": PROCESS_ID}, "a store change")


def publish_revocation(token_ids: list[str], reason: str) -> None:
    """Ends, on every server process, the live sessions that were opened with
    these tokens (ids as the token validator puts them in Session.token_id).
    Callable from any thread or process, like publish_change."""
    if token_ids:
        message = {"type": REVOKED_MESSAGE, "tokens": [str(t) for t in token_ids], "reason": reason,
                   "origin": PROCESS_ID}
        _broadcast(message, "a session revocation")


def _broadcast(message: dict[str, Any], what: str) -> None:
    """Delivers a message to the hub of every server process. In a server
    process its own hub handles it at once (no layer round trip, and it still
    works while the layer is down) and the others get it through the layer;
    the calling thread (often the database thread) never waits for the loop.
    Elsewhere (a management command) it goes through the layer only."""
    layer = get_channel_layer()
    if layer is None:
        return
    hub = _local_hub
    if hub is not None and hub.loop.is_running():
        if _in_other_thread(hub.loop):
            hub.loop.call_soon_threadsafe(hub.handle_local, layer, message)
        else:
            hub.handle_local(layer, message)
        return
    try:
        async_to_sync(layer.group_send)(CHANGES_GROUP, message)
    except Exception:
        # What it reports is already committed; failing now would lie to the
        # caller. Hubs repair missed changes when their layer probes return.
        logger.exception("could not publish %s to the channel layer", what)


_local_hub: "Hub | None" = None


def _hears_no_other_process(layer: Any) -> bool:
    """True for one process on SQLite with the in-memory layer: nothing
    carries other processes' changes to it."""
    return isinstance(layer, InMemoryChannelLayer) and connections["default"].vendor == "sqlite"


def _sqlite_data_version() -> tuple[int, int]:
    # The connection object too: a reconnect (CONN_MAX_AGE) starts a new
    # count, and must not be mistaken for another process's write.
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA data_version")
        return id(connection.connection), cursor.fetchone()[0]


@functools.lru_cache(maxsize=None)
def _token_recheck(path: str) -> Any:
    return import_string(path)


def _in_other_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True





@dataclass(eq=False, slots=True)
class Subscription:
    consumer: "DashboardConsumer"
    subscription_id: str
    live: "LiveQuery"
    last_json: str
    # The session last found allowed to receive this subscription's pushes.
    allowed_for: Any = None
    # Everything of the push frame before the data: made once, used per push.
    frame_prefix: str = ""
    # The user it was made for, whose live-query quota it counts against.
    owner: str = ""

    def __post_init__(self) -> None:
        self.frame_prefix = push_frame_prefix(self.subscription_id)


@dataclass(eq=False)
class LiveQuery:
    query: QueryDef
    params: dict[str, Any]
    key: tuple[str, str]
    buckets: set[str] = field(default_factory=set)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    evaluations: int = 0
    # The JSON of the last round's result; subscriptions that hold this very
    # string are known to be up to date with it.
    last_json: str | None = None
    # When (ms since epoch) the result goes stale with time alone (a sliding
    # window), or None.
    refresh_at: float | None = None


def evaluate(live: LiveQuery) -> str:
    """The query's current result as JSON; runs in the database thread."""
    store = QueryStore()
    result = live.query.function(store, live.params)
    live.buckets = store.buckets_read
    live.refresh_at = store.refresh_at
    live.evaluations += 1
    return encode(result)


def _evaluate_all(lives: list[LiveQuery]) -> list[str | BaseException]:
    results: list[str | BaseException] = []
    for live in lives:
        try:
            results.append(evaluate(live))
        except Exception as error:  # one broken query must not stop the others
            logger.exception("evaluating query %s failed", live.query.name)
            results.append(error)
    return results


class Hub:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.live: dict[tuple[str, str], LiveQuery] = {}
        self.connections: set[DashboardConsumer] = set()
        self.connections_per_address: dict[str, int] = {}
        self.unauthenticated_per_address: dict[str, int] = {}
        self._addresses: dict[DashboardConsumer, str] = {}
        self._not_logged_in: set[DashboardConsumer] = set()
        self.subscription_count = 0
        limits = settings.DASHBOARD
        self.live_quota = LiveQueryQuota()
        self.outbox_ledger = OutboxLedger(limits["MAX_OUTBOX_BYTES_PER_USER"], limits["MAX_OUTBOX_BYTES_TOTAL"])
        self._limiter: RequestLimiter | None = None
        self.pending: set[str] = set()
        # Live queries whose result went stale with time (sliding windows).
        self.due: set[tuple[str, str]] = set()
        self.wakeup = asyncio.Event()
        # Serializes every read that feeds a subscription (initial results
        # and re-evaluations), so no push can carry an older result than one a
        # subscription already has.
        self.lock = asyncio.Lock()
        self.channel_name: str | None = None
        self.tasks: list[asyncio.Task] = []
        # Counters, for logs and tests.
        self.changes_received = 0
        self.rounds = 0
        self.layer_failures = 0
        self.resyncs = 0
        self.layer_healthy = True
        self._probes_sent = 0
        self._probe_returned = 0
        self._started = False
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        global _local_hub
        async with self._starting:
            if self._started:
                return
            _local_hub = self
            layer = get_channel_layer()
            self.channel_name = await layer.new_channel("dashboard.hub.")
            await layer.group_add(CHANGES_GROUP, self.channel_name)
            self.tasks = [
                asyncio.create_task(self._receive_changes(layer), name="hub-receive"),
                asyncio.create_task(self._evaluate_changes(), name="hub-evaluate"),
                asyncio.create_task(self._refresh_group(layer), name="hub-refresh"),
                asyncio.create_task(self._heartbeat(), name="hub-heartbeat"),
                asyncio.create_task(self._probe(layer), name="hub-probe"),
                asyncio.create_task(self._refresh_stale(), name="hub-refresh-stale"),
            ]
            if _hears_no_other_process(layer) and settings.DASHBOARD["EXTERNAL_WRITES_POLL_SECONDS"] > 0:
                self.tasks.append(asyncio.create_task(self._watch_sqlite(), name="hub-watch-sqlite"))
            self._started = True

    async def stop(self) -> None:
        global _local_hub
        if _local_hub is self:
            _local_hub = None
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self._started = False

    # --- subscriptions ---------------------------------------------------

    async def subscribe(
        self, consumer: "DashboardConsumer", subscription_id: str, query: QueryDef, params: dict[str, Any]
    ) -> tuple[Subscription, str]:
        """Registers a subscription and returns it with its initial result's JSON.

        The caller must send the reply before yielding to the loop again, so
        the reply goes out before any push for the subscription.
        """
        await self.start()
        key = (query.name, encode(params))
        owner = consumer.session.user_id if consumer.session is not None else ""
        limits = settings.DASHBOARD
        async with self.lock:
            existing = self.live.get(key)
            self.live_quota.check(owner, key, len(self.live), existing is not None,
                                  limits["MAX_LIVE_QUERIES_PER_USER"], limits["MAX_LIVE_QUERIES"])
            live = existing or LiveQuery(query=query, params=params, key=key)
            [result] = await database_sync_to_async(_evaluate_all)([live])
            if isinstance(result, BaseException):
                raise result
            subscription = Subscription(consumer, subscription_id, live, result, owner=owner)
            live.subscriptions[id(subscription)] = subscription
            self.subscription_count += 1
            self.live_quota.add(owner, key)
            self.live[key] = live
            return subscription, result

    def unsubscribe(self, subscription: Subscription) -> None:
        live = subscription.live
        if live.subscriptions.pop(id(subscription), None) is not None:
            self.subscription_count -= 1
            self.live_quota.remove(subscription.owner, live.key)
        if not live.subscriptions and self.live.get(live.key) is live:
            del self.live[live.key]

    # --- connections -------------------------------------------------------

    def admit(self, consumer: "DashboardConsumer", address: str, limit: int, unauthenticated_limit: int) -> bool:
        """Registers a connection unless its address already has `limit`, or
        `unauthenticated_limit` that have not logged in yet (0: no limit)."""
        count = self.connections_per_address.get(address, 0)
        waiting = self.unauthenticated_per_address.get(address, 0)
        if count >= limit or (unauthenticated_limit > 0 and waiting >= unauthenticated_limit):
            return False
        self.connections_per_address[address] = count + 1
        self.unauthenticated_per_address[address] = waiting + 1
        self._addresses[consumer] = address
        self._not_logged_in.add(consumer)
        self.connections.add(consumer)
        return True

    def logged_in(self, consumer: "DashboardConsumer") -> None:
        """The connection's first login: it no longer counts as waiting."""
        if consumer in self._not_logged_in:
            self._not_logged_in.discard(consumer)
            _decrement(self.unauthenticated_per_address, self._addresses.get(consumer))

    def release(self, consumer: "DashboardConsumer") -> None:
        self.connections.discard(consumer)
        address = self._addresses.pop(consumer, None)
        if consumer in self._not_logged_in:
            self._not_logged_in.discard(consumer)
            _decrement(self.unauthenticated_per_address, address)
        _decrement(self.connections_per_address, address)

    def request_limiter(self) -> RequestLimiter | None:
        """The per-user request limiter, or None when the limit is off (0)."""
        rate = settings.DASHBOARD["REQUEST_RATE"]
        per = settings.DASHBOARD["REQUEST_RATE_WINDOW_SECONDS"]
        if rate <= 0:
            return None
        limiter = self._limiter
        if limiter is None or (limiter.rate, limiter.per) != (rate, per):
            limiter = self._limiter = RequestLimiter(rate, per)
        return limiter

    # --- changes ---------------------------------------------------------

    async def _receive_changes(self, layer: Any) -> None:
        while True:
            try:
                message = await layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("channel layer receive failed; retrying")
                await asyncio.sleep(1)
                continue
            if message.get("origin") == PROCESS_ID:
                # Applied when it was sent (handle_local); a probe comes back.
                if message.get("type") == PROBE_MESSAGE:
                    self._probe_came_back(message.get("n", 0))
                continue
            self.handle(message)

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == CHANGED_MESSAGE:
            self.note_changes(message.get("changes") or {})
        elif kind == REVOKED_MESSAGE:
            self.revoke_sessions(set(message.get("tokens") or ()), str(message.get("reason", "")))

    def note_changes(self, changes: dict[str, Any]) -> None:
        self.changes_received += 1
        self.pending.update(changes)
        self.wakeup.set()

    def revoke_sessions(self, token_ids: set[str], reason: str) -> None:
        for consumer in list(self.connections):
            session = consumer.session
            if session is not None and session.token_id is not None and session.token_id in token_ids:
                consumer.revoke(reason)

    def handle_local(self, layer: Any, message: dict[str, Any]) -> None:
        """A message from this process: handle it here, send it on."""
        self.handle(message)
        task = asyncio.ensure_future(layer.group_send(CHANGES_GROUP, message))
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._layer_failed("could not publish a store change", task.exception())

    # --- layer health ------------------------------------------------------

    async def _probe(self, layer: Any) -> None:
        """Sends this hub a message through the layer every few seconds. If
        one does not come back in time, changes from other processes may have
        been lost too; when probes return, every live query is re-evaluated."""
        interval = settings.DASHBOARD["LAYER_PROBE_SECONDS"]
        while True:
            await asyncio.sleep(interval)
            if self._probes_sent > self._probe_returned:
                self._layer_failed("a layer probe did not come back", None)
            self._probes_sent += 1
            try:
                await layer.group_send(
                    CHANGES_GROUP, {"type": PROBE_MESSAGE, "origin": PROCESS_ID, "n": self._probes_sent}
                )
            except Exception as error:
                self._layer_failed("could not send a layer probe", error)

    async def _watch_sqlite(self) -> None:
        """Without a shared layer no message tells this process about writes
        made by others (a shell, `prune_metrics`, a second server). SQLite
        counts them: `PRAGMA data_version` changes when another connection
        commits. When it does, every live query is re-evaluated; unchanged
        results are not pushed, so a write that was also announced directly
        (an admin page's, made on another thread's connection) costs one
        evaluation and no push."""
        interval = settings.DASHBOARD["EXTERNAL_WRITES_POLL_SECONDS"]
        seen = None
        while True:
            try:
                version = await database_sync_to_async(_sqlite_data_version)()
            except Exception:
                logger.exception("could not read SQLite's data_version")
            else:
                if seen is not None and version != seen and self.live:
                    for live in self.live.values():
                        self.pending.update(live.buckets)
                    self.wakeup.set()
                seen = version
            await asyncio.sleep(interval)

    def _probe_came_back(self, n: int) -> None:
        self._probe_returned = max(self._probe_returned, n)
        if not self.layer_healthy and n == self._probes_sent:
            self.layer_healthy = True
            self.resyncs += 1
            logger.warning("channel layer is back: re-evaluating every live query")
            for live in self.live.values():
                self.pending.update(live.buckets)
            self.wakeup.set()

    def _layer_failed(self, what: str, error: BaseException | None) -> None:
        self.layer_failures += 1
        if self.layer_healthy:
            self.layer_healthy = False
            logger.error("%s: pushes from other processes may be missed until it recovers", what,
                         exc_info=error)

    async def _evaluate_changes(self) -> None:
        loop = asyncio.get_running_loop()
        rest_until = 0.0
        while True:
            await self.wakeup.wait()
            # Optionally rest after a round (FANOUT_REST_RATIO × its duration)
            # so that a stream of writes is covered by fewer rounds; a lone
            # change is still evaluated at once.
            rest = rest_until - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
            self.wakeup.clear()
            started = loop.time()
            try:
                await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("fan-out round failed")
            finished = loop.time()
            rest_until = finished + (finished - started) * settings.DASHBOARD["FANOUT_REST_RATIO"]

    async def _refresh_stale(self) -> None:
        """Marks live queries whose result goes stale with time (a sliding
        window's next step) for the next round. A tick is a scan of the live
        queries, far cheaper than any evaluation."""
        while True:
            await asyncio.sleep(REFRESH_TICK_SECONDS)
            now = time.time() * 1000
            for key, live in self.live.items():
                if live.refresh_at is not None and live.refresh_at <= now:
                    live.refresh_at = None  # set again by its evaluation
                    self.due.add(key)
            if self.due:
                self.wakeup.set()

    async def run_round(self) -> None:
        async with self.lock:
            changed, self.pending = self.pending, set()
            due, self.due = self.due, set()
            lives = [live for key, live in self.live.items() if live.buckets & changed or key in due]
            if not lives:
                return
            self.rounds += 1
            results = await database_sync_to_async(_evaluate_all)(lives)
            # From here to the end nothing awaits: subscriptions cannot change
            # under the loop, and each consumer only queues the frames.
            for live, result in zip(lives, results):
                if isinstance(result, BaseException):
                    continue
                previous, live.last_json = live.last_json, result
                # Subscriptions that hold the previous round's string (most of
                # them) share one comparison; newer ones compare their own.
                changed_since_previous = previous is None or previous != result
                # The part of the push frame after the subscription id is the
                # same for every subscriber: encoded once, when first needed.
                body: tuple[str, str] = (result, "}")
                body_utf8: tuple[bytes, bytes] | None = None
                # Delivery never changes the subscriptions synchronously (a
                # close is scheduled), so the dict is iterated as it is.
                for subscription in live.subscriptions.values():
                    if subscription.last_json is previous:
                        changed = changed_since_previous
                    else:
                        changed = subscription.last_json != result
                    subscription.last_json = result
                    if changed:
                        if body_utf8 is None:
                            body_utf8 = (result.encode(), b"}")
                        subscription.consumer.deliver_push(subscription, body, body_utf8)

    async def _refresh_group(self, layer: Any) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECONDS)
            try:
                await layer.group_add(CHANGES_GROUP, self.channel_name)
            except Exception:
                logger.exception("could not refresh the change group membership")


    async def _heartbeat(self) -> None:
        """One ticker for all local connections instead of a timer each; on
        each tick, live sessions are checked against their tokens again, so
        a revocation by any path (a shell, a QuerySet.update(), another
        process without Redis) ends them within one heartbeat."""
        while True:
            await asyncio.sleep(settings.DASHBOARD["HEARTBEAT_SECONDS"])
            now = int(time.time() * 1000)
            for consumer in list(self.connections):
                consumer.heartbeat_tick(now)
            try:
                await self.recheck_sessions()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("could not check live sessions against their tokens")

    async def recheck_sessions(self) -> None:
        path = settings.DASHBOARD["TOKEN_RECHECK"]
        if not path or (path == DEFAULT_TOKEN_RECHECK and settings.DASHBOARD["TOKEN_VALIDATOR"] != DEFAULT_TOKEN_VALIDATOR):
            # The default check knows the default validator's token ids only.
            return
        sessions = {consumer: consumer.session for consumer in self.connections if consumer.session is not None}
        token_ids = sorted({s.token_id for s in sessions.values() if s.token_id is not None})
        if not token_ids:
            return
        invalid: dict[str, str] = await database_sync_to_async(_token_recheck(path))(token_ids)
        for consumer, session in sessions.items():
            reason = invalid.get(session.token_id) if session.token_id is not None else None
            # Only if the connection still holds that session (not a new login meanwhile).
            if reason is not None and consumer.session is session:
                consumer.revoke(reason)


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None or key not in counts:
        return
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


_hubs: dict[int, Hub] = {}


def get_hub() -> Hub:
    """This process's hub (one per event loop: tests run a loop per test)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    if hub is None or hub.loop is not loop:
        hub = _hubs[id(loop)] = Hub()
    return hub
