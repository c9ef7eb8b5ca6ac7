"""The process's WebSocket connections: admission per client address, the
heartbeat ticker, and ending sessions (revocation, or tokens that a check
finds no longer valid)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils.module_loading import import_string

from .auth import Session
from .request_limit import RequestLimiter

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_VALIDATOR = "accounts.tokens.validate_token"
DEFAULT_TOKEN_RECHECK = "accounts.tokens.invalid_among"


class Viewer(Protocol):
    """What the connection registry needs of a connection (the consumer)."""

    session: Session | None

    def heartbeat_tick(self, now_ms: int) -> None:
        """Sends a ping, or closes the connection if the last one went unanswered."""

    def revoke(self, reason: str) -> None:
        """Ends the session: a session_revoked frame, then close 4002."""

    def enqueue(self, frame: str) -> None:
        """Queues a frame in order with replies."""

    async def close_after_outbox(self, code: int, reason: str) -> None:
        """Closes once the queued frames have gone out (bounded wait)."""


class Connections:
    def __init__(self) -> None:
        self.all: set[Viewer] = set()
        self.per_address: dict[str, int] = {}
        self.unauthenticated_per_address: dict[str, int] = {}
        self._addresses: dict[Viewer, str] = {}
        self._not_logged_in: set[Viewer] = set()
        self._limiter: RequestLimiter | None = None

    def __iter__(self) -> Any:
        return iter(list(self.all))

    def __len__(self) -> int:
        return len(self.all)

    def tasks(self) -> list[asyncio.Task]:
        return [asyncio.create_task(self._heartbeat(), name="connections-heartbeat")]

    # --- admission ---------------------------------------------------------

    def admit(self, viewer: Viewer, address: str, limit: int, unauthenticated_limit: int) -> bool:
        """Registers a connection unless its address already has `limit`, or
        `unauthenticated_limit` that have not logged in yet (0: no limit)."""
        count = self.per_address.get(address, 0)
        waiting = self.unauthenticated_per_address.get(address, 0)
        if count >= limit or (unauthenticated_limit > 0 and waiting >= unauthenticated_limit):
            return False
        self.per_address[address] = count + 1
        self.unauthenticated_per_address[address] = waiting + 1
        self._addresses[viewer] = address
        self._not_logged_in.add(viewer)
        self.all.add(viewer)
        return True

    def logged_in(self, viewer: Viewer) -> None:
        """The connection's first login: it no longer counts as waiting."""
        if viewer in self._not_logged_in:
            self._not_logged_in.discard(viewer)
            _decrement(self.unauthenticated_per_address, self._addresses.get(viewer))

    def release(self, viewer: Viewer) -> None:
        self.all.discard(viewer)
        address = self._addresses.pop(viewer, None)
        if viewer in self._not_logged_in:
            self._not_logged_in.discard(viewer)
            _decrement(self.unauthenticated_per_address, address)
        _decrement(self.per_address, address)

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

    # --- sessions ------------------------------------------------------------

    def revoke_sessions(self, token_ids: set[str], reason: str) -> None:
        for viewer in self:
            session = viewer.session
            if session is not None and session.token_id is not None and session.token_id in token_ids:
                viewer.revoke(reason)

    async def _heartbeat(self) -> None:
        """One ticker for all local connections instead of a timer each; on
        each tick, live sessions are checked against their tokens again, so
        a revocation by any path (a shell, a QuerySet.update(), another
        process without Redis) ends them within one heartbeat."""
        while True:
            await asyncio.sleep(settings.DASHBOARD["HEARTBEAT_SECONDS"])
            now = int(time.time() * 1000)
            for viewer in self:
                viewer.heartbeat_tick(now)
            try:
                await self.recheck_sessions()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("could not check live sessions against their tokens")

    async def recheck_sessions(self) -> None:
        path = settings.DASHBOARD["TOKEN_RECHECK"]
        if not path or (
            path == DEFAULT_TOKEN_RECHECK and settings.DASHBOARD["TOKEN_VALIDATOR"] != DEFAULT_TOKEN_VALIDATOR
        ):
            # The default check knows the default validator's token ids only.
            return
        sessions = {viewer: viewer.session for viewer in self if viewer.session is not None}
        token_ids = sorted({s.token_id for s in sessions.values() if s is not None and s.token_id is not None})
        if not token_ids:
            return
        invalid: dict[str, str] = await database_sync_to_async(_token_recheck(path))(token_ids)
        for viewer, session in sessions.items():
            reason = invalid.get(session.token_id) if session is not None and session.token_id is not None else None
            # Only if the connection still holds that session (not a new login meanwhile).
            if reason is not None and viewer.session is session:
                viewer.revoke(reason)


@functools.cache
def _token_recheck(path: str) -> Any:
    return import_string(path)


def _decrement(counts: dict[str, int], key: str | None) -> None:
    if key is None or key not in counts:
        return
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
