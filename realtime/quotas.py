"""Per-user and per-process bounds on what subscribers make a server spend.

Two ledgers, each kept by the process's hub:
- `LiveQueryQuota`: the distinct live queries (query name and params) each
  user's subscriptions hold. Every distinct live query is evaluated after
  every change of its buckets, so this number, not the subscription count,
  is what a client could multiply; joining a query that is already live
  costs nothing and is always allowed.
- `OutboxLedger`: the bytes waiting in connections' outboxes for clients
  that do not read, per user and in all. Past a budget the connections that
  have made no progress for the longest are closed, until it fits again.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Protocol

from .errors import RATE_LIMITED, ProtocolError

QueryKey = Hashable


class LiveQueryQuota:
    def __init__(self) -> None:
        # user -> {query key: how many of the user's subscriptions hold it}
        self._held: dict[str, collections.Counter[QueryKey]] = {}

    def check(self, user: str, key: QueryKey, live_now: int, is_live: bool, per_user: int, total: int) -> None:
        """Raises RATE_LIMITED when subscribing `user` to `key` would exceed
        a limit; `live_now` is the process's distinct live queries."""
        held = self._held.get(user)
        if held is not None and key in held:
            return
        if not is_live and live_now >= total:
            raise ProtocolError(
                RATE_LIMITED, f"Live query limit reached (max {total} distinct queries per server process)"
            )
        if held is not None and len(held) >= per_user:
            raise ProtocolError(RATE_LIMITED, f"Live query limit reached (max {per_user} distinct queries per user)")

    def add(self, user: str, key: QueryKey) -> None:
        self._held.setdefault(user, collections.Counter())[key] += 1

    def remove(self, user: str, key: QueryKey) -> None:
        held = self._held.get(user)
        if held is None or key not in held:
            return
        held[key] -= 1
        if held[key] <= 0:
            del held[key]
            if not held:
                del self._held[user]

    def distinct(self, user: str) -> int:
        return len(self._held.get(user, ()))


class Metered(Protocol):
    """An outbox as the ledger sees it."""

    queued: int
    # The user whose connection it is (None before login), for the per-user budget.
    user: str | None
    # time.monotonic() of the last frame handed on (or of the outbox's start).
    progress_at: float

    def overflow(self) -> None:
        """Closes the connection for not reading (frees its bytes)."""


class OutboxLedger:
    def __init__(self, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total_limit = total
        self.total = 0
        self.by_user: collections.Counter[str | None] = collections.Counter()
        self._outboxes: set[Metered] = set()
        self.closed_for_budget = 0

    def grew(self, outbox: Metered, delta: int) -> None:
        """`outbox.queued` changed by `delta` (already applied)."""
        if delta == 0:
            return
        self.total += delta
        self.by_user[outbox.user] += delta
        if outbox.queued > 0:
            self._outboxes.add(outbox)
        else:
            self._outboxes.discard(outbox)
        if delta > 0:
            self._enforce(outbox.user)

    def moved(self, outbox: Metered, old_user: str | None) -> None:
        """The outbox's connection logged in as another user."""
        if outbox.queued:
            self.by_user[old_user] -= outbox.queued
            self.by_user[outbox.user] += outbox.queued
            self._enforce(outbox.user)

    def _enforce(self, user: str | None) -> None:
        if user is not None and self.per_user > 0:
            while self.by_user[user] > self.per_user:
                if not self._close_slowest(lambda o: o.user == user):
                    break
        if self.total_limit > 0:
            while self.total > self.total_limit:
                if not self._close_slowest(lambda o: True):
                    break

    def _close_slowest(self, which) -> bool:
        candidates = [o for o in self._outboxes if o.queued > 0 and which(o)]
        if not candidates:
            return False
        slowest = min(candidates, key=lambda o: o.progress_at)
        self.closed_for_budget += 1
        slowest.overflow()
        self._outboxes.discard(slowest)
        return True
