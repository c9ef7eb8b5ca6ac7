"""Readiness checks: can this process reach its database and, when one is
configured, its Redis, and are the database's migrations applied? Each check
has a short timeout and says only what failed; the reason goes to the log
once, when the answer changes.

`/readyz` is unauthenticated, so its cost is bounded: one round of checks
runs at a time (a lock; probes arriving meanwhile wait for it) and its
verdict is reused for CACHE_SECONDS, so a flood of probes costs one database
query and one Redis connection a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

logger = logging.getLogger(__name__)

DATABASE_TIMEOUT_SECONDS = 2.0
REDIS_TIMEOUT_SECONDS = 1.0
# Loading the migration graph reads every migration module: slower than a ping.
MIGRATIONS_TIMEOUT_SECONDS = 5.0
CACHE_SECONDS = 1.0
clock: Callable[[], float] = time.monotonic

# check name -> the last failure logged (None: passing), so a failing probe
# every few seconds logs once, not every time.
_last_failure: dict[str, str | None] = {}
# Once seen applied, migrations stay applied for this process's code: later
# probes skip the check.
_migrated = False
# (REDIS_URL, when it expires, the verdict) of the last round.
_cached: tuple[str, float, dict[str, str]] | None = None
# One lock per event loop (an asyncio.Lock belongs to the loop it waits in).
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


class MigrationsPending(Exception):
    """The database lacks migrations this code needs."""


def _database_ping() -> None:
    # In the thread for database work (database_sync_to_async, which also
    # drops a connection found broken, so the next probe reconnects): the
    # connection it keeps open (CONN_MAX_AGE) is the one checked.
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def migrations_applied() -> bool:
    """Whether every migration of the code is applied (Django's own plan, as
    `migrate --check` computes it)."""
    executor = MigrationExecutor(connection)
    return not executor.migration_plan(executor.loader.graph.leaf_nodes())


async def check_database() -> None:
    await asyncio.wait_for(database_sync_to_async(_database_ping)(), DATABASE_TIMEOUT_SECONDS)


async def check_migrations() -> None:
    global _migrated
    if _migrated:
        return
    applied = await asyncio.wait_for(database_sync_to_async(migrations_applied)(), MIGRATIONS_TIMEOUT_SECONDS)
    if not applied:
        raise MigrationsPending("run ./dev migrate")
    _migrated = True


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
    """{check: verdict} for the database, its migrations and, with REDIS_URL
    set, Redis: "ok", "unreachable", "timeout", or for migrations "pending"
    (and "unknown" while the database does not answer). Reused for
    CACHE_SECONDS; one round at a time."""
    lock = _locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        redis_url = settings.REDIS_URL
        if _cached is not None and _cached[0] == redis_url and clock() < _cached[1]:
            return dict(_cached[2])
        verdicts = await _checks(redis_url)
        _remember(redis_url, verdicts)
        return dict(verdicts)


def _remember(redis_url: str, verdicts: dict[str, str]) -> None:
    global _cached
    _cached = (redis_url, clock() + CACHE_SECONDS, verdicts)


async def _checks(redis_url: str) -> dict[str, str]:
    # The database and Redis concurrently; the migrations once the database answers.
    checks = {"database": check_database()}
    if redis_url:
        checks["redis"] = check_redis(redis_url)
    outcomes = dict(zip(checks, await asyncio.gather(*checks.values(), return_exceptions=True), strict=True))
    verdicts = {"database": _verdict("database", outcomes["database"])}
    if verdicts["database"] == "ok":
        try:
            await check_migrations()
        except Exception as error:
            verdicts["migrations"] = _verdict("migrations", error)
        else:
            verdicts["migrations"] = _verdict("migrations", None)
    else:
        verdicts["migrations"] = "unknown"
    if redis_url:
        verdicts["redis"] = _verdict("redis", outcomes["redis"])
    return verdicts


def forget() -> None:
    """Drops the cached verdict, the logged failures and what is known of the
    migrations (tests)."""
    global _cached, _migrated
    _cached = None
    _migrated = False
    _last_failure.clear()


def _verdict(name: str, outcome: BaseException | None) -> str:
    if outcome is None:
        if _last_failure.get(name) is not None:
            logger.warning("readiness: %s %s", name, "applied" if name == "migrations" else "reachable again")
        _last_failure[name] = None
        return "ok"
    if isinstance(outcome, asyncio.CancelledError):
        raise outcome
    if isinstance(outcome, MigrationsPending):
        verdict = "pending"
    else:
        verdict = "timeout" if isinstance(outcome, TimeoutError) else "unreachable"
    detail = f"{verdict}: {type(outcome).__name__}: {outcome}"
    if _last_failure.get(name) != detail:
        logger.warning("readiness: %s %s", name, detail)
    _last_failure[name] = detail
    return verdict
