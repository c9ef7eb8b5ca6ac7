"""Notices writes that no message announces, for one server on SQLite
without a shared channel layer (a shell, `prune_metrics`, a second server):
SQLite's `PRAGMA data_version` changes when another connection commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer
from django.db import connections

logger = logging.getLogger(__name__)


def hears_no_other_process(layer: Any) -> bool:
    """True for one process on SQLite with the in-memory layer: nothing
    carries other processes' changes to it."""
    return isinstance(layer, InMemoryChannelLayer) and connections["default"].vendor == "sqlite"


def _data_version() -> tuple[int, int]:
    # The connection object too: a reconnect (CONN_MAX_AGE) starts a new
    # count, and must not be mistaken for another process's write.
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA data_version")
        return id(connection.connection), cursor.fetchone()[0]


async def watch(interval: float, on_change: Callable[[], None]) -> None:
    """Reads data_version every `interval` seconds in the database thread and
    calls `on_change` when another connection has committed since."""
    seen = None
    while True:
        try:
            version = await database_sync_to_async(_data_version)()
        except Exception:
            logger.exception("could not read SQLite's data_version")
        else:
            if seen is not None and version != seen:
                on_change()
            seen = version
        await asyncio.sleep(interval)
