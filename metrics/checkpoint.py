"""Keeps SQLite's WAL checkpoint out of the write path in a server process.

By default SQLite checkpoints inside the COMMIT that takes the write-ahead
log past 1,000 pages: that one write then waits for the log to be copied
into the database file and for two fsyncs. With ten million readings the
pages a transaction touches are scattered, and S5 measured those commits as
the write-acknowledgement tail (21-23 ms p99, every 10-12 s, docs/history.md).
In a server process the automatic checkpoint is turned off for Django's
connections and this thread checkpoints every few seconds on its own
connection instead. A PASSIVE checkpoint waits for no lock: writers go on
appending to the log while it copies, so no write waits for it.

Other processes on the same file (a shell, `prune_metrics`) keep SQLite's
automatic checkpoint. Nothing here applies to PostgreSQL or to in-memory
databases (the tests').
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any

from django.db.backends.signals import connection_created

logger = logging.getLogger(__name__)

# A failing checkpoint is logged at most this often, so a broken disk does not
# flood the log once a second.
LOG_EVERY_SECONDS = 60.0


class Checkpointer(threading.Thread):
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` every `interval` seconds on a
    connection of its own."""

    def __init__(self, path: str, interval: float) -> None:
        super().__init__(name="sqlite-checkpoint", daemon=True)
        self.path = path
        self.interval = interval
        self.runs = 0
        # Notified after each run, for whoever waits for one (the tests).
        self.ran = threading.Condition()
        self._stop_requested = threading.Event()
        self._last_logged = 0.0

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=1, check_same_thread=False)
        try:
            while not self._stop_requested.wait(self.interval):
                self.checkpoint(db)
        finally:
            db.close()

    def checkpoint(self, db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            now = time.monotonic()
            if now - self._last_logged >= LOG_EVERY_SECONDS:
                self._last_logged = now
                logger.exception("SQLite WAL checkpoint failed (next report in %.0f s at most)", LOG_EVERY_SECONDS)
        with self.ran:
            self.runs += 1
            self.ran.notify_all()

    def stop(self) -> None:
        self._stop_requested.set()


_lock = threading.Lock()
_interval = 0.0
_running: Checkpointer | None = None


def enable(interval: float) -> None:
    """In a server process: from its first connection to a SQLite file on,
    Django's connections to it do without the automatic checkpoint and a
    thread checkpoints every `interval` seconds. Nothing for other
    databases, in memory (the tests' own), or with `interval` 0. Lazy, so
    that importing the ASGI application (tests do) opens no file."""
    global _interval
    if interval > 0:
        _interval = interval
        connection_created.connect(_on_connection, dispatch_uid="dashboard-sqlite-checkpoint")


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor != "sqlite" or connection.alias != "default" or connection.is_in_memory_db():
        return
    _ensure_thread(str(connection.settings_dict["NAME"]))
    connection.connection.execute("PRAGMA wal_autocheckpoint=0")


def _ensure_thread(path: str) -> None:
    global _running
    with _lock:
        if _running is None or not _running.is_alive():
            _running = Checkpointer(path, _interval)
            _running.start()


def disable() -> None:
    """Stops the thread; connections opened from now on keep SQLite's
    automatic checkpoint (tests)."""
    global _running
    connection_created.disconnect(dispatch_uid="dashboard-sqlite-checkpoint")
    with _lock:
        if _running is not None:
            _running.stop()
            _running.join()
            _running = None
