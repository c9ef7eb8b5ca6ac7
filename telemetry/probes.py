"""Readiness checks: can this process reach its database and, when one is
configured, its Redis? Each check has a short timeout and says only what
failed; the reason goes to the log once, when the answer changes."""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

DATABASE_TIMEOUT_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 1.0

# check name -> the last failure logged (None: passing), so a failing probe
# every few seconds logs once, not every time.
_last_failure: dict[str, str | None] = {}


def _database_ping() -> None:
    # In the thread for database work (database_sync_to_async, which also
    # drops a connection found broken, so the next probe reconnects): the
    # connection it keeps open (CONN_MAX_AGE) is the one checked.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def check_database() -> None:
    await asyncio.wait_for(database_sync_to_async(_database_ping)(), DATABASE_TIMEOUT_SECONDS)


async def check_redis(url: str) -> None:
    import redis.asyncio as redis  # channels-redis's dependency; only needed with REDIS_URL

    client = redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS
    )
    try:
        await asyncio.wait_for(client.ping(), REDIS_TIMEOUT_SECONDS * 2)
    finally:
        await client.aclose()


async def readiness() -> dict[str, str]:
    """{check: "ok" | "unreachable" | "timeout"} for the database and, with
    REDIS_URL set, Redis; the checks run concurrently."""
    checks = {"database": check_database()}
    if settings.REDIS_URL:
        checks["redis"] = check_redis(settings.REDIS_URL)
    outcomes = await asyncio.gather(*checks.values(), return_exceptions=True)
    return {name: _verdict(name, outcome) for name, outcome in zip(checks, outcomes, strict=True)}


def _verdict(name: str, outcome: BaseException | None) -> str:
    if outcome is None:
        if _last_failure.get(name) is not None:
            logger.warning("readiness: %s reachable again", name)
        _last_failure[name] = None
        return "ok"
    if isinstance(outcome, asyncio.CancelledError):
        raise outcome
    verdict = "timeout" if isinstance(outcome, TimeoutError) else "unreachable"
    detail = f"{verdict}: {type(outcome).__name__}: {outcome}"
    if _last_failure.get(name) != detail:
        logger.warning("readiness: %s %s", name, detail)
    _last_failure[name] = detail
    return verdict
