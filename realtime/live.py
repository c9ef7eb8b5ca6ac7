"""Live queries: each distinct (query, params) that local subscriptions hold,
evaluated once per round and pushed to the subscriptions whose result changed.

Changes (bucket names) and results gone stale with time (sliding windows)
are gathered and evaluated in rounds; changes that arrive while a round runs
are merged into the next one, so under a burst a subscription may skip
intermediate results but always gets the result after the last change (the
protocol's latest-state guarantee). See docs/fanout.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings

from telemetry import instruments

from .auth import Session
from .frames import encode, push_frame_prefix
from .queries import QueryDef, QueryStore
from .quotas import LiveQueryQuota

logger = logging.getLogger(__name__)

# How often to look for results that time made stale (sliding windows,
# whose finest step is 1 s).
REFRESH_TICK_SECONDS = 0.25

QueryKey = tuple[str, str]
# Changed buckets: {bucket: the metric names whose readings changed, or None for any record}.
Changed = dict[str, set[str] | None]


class Viewer(Protocol):
    """What live queries need of a subscriber's connection (the consumer)."""

    session: Session | None

    def deliver_push(self, subscription: Subscription, body: tuple[str, ...], body_utf8: tuple[bytes, ...]) -> bool:
        """Queues a push whose data is `body` (shared by every subscriber);
        never awaits. False when it was not queued (not allowed just now)."""


@dataclass(eq=False, slots=True)
class Subscription:
    viewer: Viewer
    subscription_id: str
    live: LiveQuery
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
    key: QueryKey
    buckets: set[str] = field(default_factory=set)
    # {bucket: metric names} where the result depends on those names' readings only.
    names: dict[str, frozenset[str]] = field(default_factory=dict)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    evaluations: int = 0
    # The JSON of the last round's result; subscriptions that hold this very
    # string are known to be up to date with it.
    last_json: str | None = None
    # When (ms since epoch) the result goes stale with time alone (a sliding
    # window), or None.
    refresh_at: float | None = None
    # The length of every subscription's frame prefix together, so a round
    # counts push bytes without a step per viewer (telemetry).
    prefix_bytes: int = 0


def evaluate(live: LiveQuery) -> str:
    """The query's current result as JSON; runs in the database thread."""
    store = QueryStore()
    result = live.query.function(store, live.params)
    live.buckets = store.buckets_read
    live.names = store.names_read()
    live.refresh_at = store.refresh_at
    live.evaluations += 1
    return encode(result)


def evaluate_all(lives: list[LiveQuery]) -> list[str | BaseException]:
    results: list[str | BaseException] = []
    for live in lives:
        try:
            results.append(evaluate(live))
        except Exception as error:  # one broken query must not stop the others
            logger.exception("evaluating query %s failed", live.query.name)
            results.append(error)
    return results


class LiveQueries:
    """The process's live queries and their evaluation rounds."""

    def __init__(self) -> None:
        self.live: dict[QueryKey, LiveQuery] = {}
        self.subscription_count = 0
        self.quota = LiveQueryQuota()
        # Changes not yet evaluated.
        self.pending: Changed = {}
        self.due: set[QueryKey] = set()
        self.wakeup = asyncio.Event()
        # Serializes every read that feeds a subscription (initial results
        # and re-evaluations), so no push can carry an older result than one a
        # subscription already has.
        self.lock = asyncio.Lock()
        self.rounds = 0
        self.changes_received = 0
        # time.monotonic() when the oldest change not yet evaluated arrived
        # (push latency, telemetry); None when nothing waits.
        self.pending_since: float | None = None

    def tasks(self) -> list[asyncio.Task]:
        return [
            asyncio.create_task(self._evaluate_changes(), name="live-evaluate"),
            asyncio.create_task(self._refresh_stale(), name="live-refresh-stale"),
        ]

    # --- subscriptions ---------------------------------------------------

    async def subscribe(
        self, viewer: Viewer, subscription_id: str, query: QueryDef, params: dict[str, Any]
    ) -> tuple[Subscription, str]:
        """Registers a subscription and returns it with its initial result's JSON.

        The caller must send the reply before yielding to the loop again, so
        the reply goes out before any push for the subscription.
        """
        key = (query.name, encode(params))
        owner = viewer.session.user_id if viewer.session is not None else ""
        limits = settings.DASHBOARD
        async with self.lock:
            existing = self.live.get(key)
            self.quota.check(
                owner,
                key,
                len(self.live),
                existing is not None,
                limits["MAX_LIVE_QUERIES_PER_USER"],
                limits["MAX_LIVE_QUERIES"],
            )
            live = existing or LiveQuery(query=query, params=params, key=key)
            [result] = await database_sync_to_async(evaluate_all)([live])
            if isinstance(result, BaseException):
                raise result
            subscription = Subscription(viewer, subscription_id, live, result, owner=owner)
            live.subscriptions[id(subscription)] = subscription
            live.prefix_bytes += len(subscription.frame_prefix)
            self.subscription_count += 1
            self.quota.add(owner, key)
            self.live[key] = live
            return subscription, result

    def unsubscribe(self, subscription: Subscription) -> None:
        live = subscription.live
        if live.subscriptions.pop(id(subscription), None) is not None:
            live.prefix_bytes -= len(subscription.frame_prefix)
            self.subscription_count -= 1
            self.quota.remove(subscription.owner, live.key)
        if not live.subscriptions and self.live.get(live.key) is live:
            del self.live[live.key]

    # --- what to evaluate ------------------------------------------------

    def note_changes(self, buckets: Any, names: Any = None) -> None:
        """These buckets changed (committed): evaluate what reads them.
        `names`: {bucket: the metric names whose readings changed} where the
        change named them all; any other bucket changed as a whole."""
        self.changes_received += 1
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        names = names if isinstance(names, dict) else {}
        for bucket in buckets:
            listed = names.get(bucket)
            _add_change(self.pending, bucket, listed if isinstance(listed, list) else None)
        self.wakeup.set()

    def all_stale(self) -> None:
        """Every live query may be stale (a lost layer message, another
        process's write no message announced): evaluate them all."""
        for live in self.live.values():
            for bucket in live.buckets:
                self.pending[bucket] = None
        self.wakeup.set()

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

    # --- rounds ----------------------------------------------------------

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

    async def run_round(self) -> None:
        async with self.lock:
            changed, self.pending = self.pending, {}
            due, self.due = self.due, set()
            since, self.pending_since = self.pending_since, None
            lives = [live for key, live in self.live.items() if key in due or _affected(live, changed)]
            if not lives:
                return
            self.rounds += 1
            started = time.monotonic()
            results = await database_sync_to_async(evaluate_all)(lives)
            evaluated = time.monotonic()
            # From here to the end nothing awaits: subscriptions cannot change
            # under the loop, and each viewer only queues the frames.
            pushes = push_bytes = 0
            for live, result in zip(lives, results, strict=False):
                if not isinstance(result, BaseException):
                    sent, sent_bytes = _deliver(live, result)
                    pushes += sent
                    push_bytes += sent_bytes
            # Counted once per round, not per viewer (telemetry/instruments.py).
            instruments.note_round(
                evaluated - started, time.monotonic() - since if since is not None else None, pushes, push_bytes
            )


def _add_change(pending: Changed, bucket: str, names: list[str] | None) -> None:
    if names is None:
        pending[bucket] = None
    elif bucket not in pending:
        pending[bucket] = set(names)
    else:
        known = pending[bucket]
        if known is not None:
            known.update(names)


def _affected(live: LiveQuery, changed: Changed) -> bool:
    """Whether a change may alter the live query's result: it read a changed
    bucket, and (where it read only some names' readings) one of those names
    changed."""
    for bucket in live.buckets:
        if bucket in changed:
            names = changed[bucket]
            read = live.names.get(bucket)
            if names is None or read is None or not read.isdisjoint(names):
                return True
    return False


def _deliver(live: LiveQuery, result: str) -> tuple[int, int]:
    """Pushes `result` to the subscriptions it is news to; returns how many
    pushes were queued and their bytes (frame text; when only some
    subscribers got it, their prefixes are counted at the mean length)."""
    previous, live.last_json = live.last_json, result
    # Subscriptions that hold the previous round's string (most of them)
    # share one comparison; newer ones compare their own.
    changed_since_previous = previous is None or previous != result
    # The part of the push frame after the subscription id is the same for
    # every subscriber: encoded once, when first needed.
    body: tuple[str, str] = (result, "}")
    body_utf8: tuple[bytes, bytes] | None = None
    sent = 0
    # Delivery never changes the subscriptions synchronously (a close is
    # scheduled), so the dict is iterated as it is.
    for subscription in live.subscriptions.values():
        changed = changed_since_previous if subscription.last_json is previous else subscription.last_json != result
        if not changed:
            subscription.last_json = result
            continue
        if body_utf8 is None:
            body_utf8 = (result.encode(), b"}")
        # A push held back (no session may read it just now) leaves the
        # subscription behind, so a later login catches it up.
        if subscription.viewer.deliver_push(subscription, body, body_utf8):
            subscription.last_json = result
            sent += 1  # the one step per viewer telemetry takes
    if not sent or body_utf8 is None:
        return 0, 0
    everyone = len(live.subscriptions)
    prefixes = live.prefix_bytes if sent == everyone else live.prefix_bytes * sent // everyone
    return sent, prefixes + sent * (len(body_utf8[0]) + 1)
