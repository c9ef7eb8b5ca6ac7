"""The SQLite WAL checkpoint runs in a thread of its own, not inside a commit
(metrics/checkpoint.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from django.db.utils import ConnectionHandler

from metrics import checkpoint
from tests.servers import TIMEOUT, live_server, template_database  # noqa: F401  (fixture)


def _wal_database(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x INTEGER)")
    return db


def _in_database_file(path: Path) -> list[int]:
    """Rows as the database file holds them, ignoring the write-ahead log."""
    frozen = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return [row[0] for row in frozen.execute("SELECT x FROM t ORDER BY x")]
    except sqlite3.OperationalError:  # the table itself is still only in the log
        return []
    finally:
        frozen.close()


def test_the_thread_copies_committed_writes_into_the_database_file(tmp_path):
    path = tmp_path / "db.sqlite3"
    writer = _wal_database(path)
    writer.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    assert _in_database_file(path) == []  # in the log only: nothing checkpointed them

    thread = checkpoint.Checkpointer(str(path), interval=0.05)
    thread.start()
    try:
        with thread.ran:
            assert thread.ran.wait_for(lambda: thread.runs >= 1, timeout=TIMEOUT)
        assert _in_database_file(path) == [1, 2, 3]
        # Writes go on while it runs; the next run takes them too.
        writer.execute("INSERT INTO t VALUES (4)")
        seen = thread.runs
        with thread.ran:
            assert thread.ran.wait_for(lambda: thread.runs > seen, timeout=TIMEOUT)
        assert _in_database_file(path) == [1, 2, 3, 4]
    finally:
        thread.stop()
        thread.join(TIMEOUT)
        writer.close()
    assert not thread.is_alive()


def test_a_failing_checkpoint_is_logged_once_per_period_and_the_thread_goes_on(tmp_path, caplog):
    thread = checkpoint.Checkpointer(str(tmp_path / "x.sqlite3"), interval=1)

    class Broken:
        def execute(self, sql):
            raise sqlite3.OperationalError("disk I/O error")

    with caplog.at_level("ERROR", logger="metrics.checkpoint"):
        for _ in range(3):
            thread.checkpoint(Broken())  # type: ignore[arg-type]
    assert thread.runs == 3
    assert [r.getMessage() for r in caplog.records] == ["SQLite WAL checkpoint failed (next report in 60 s at most)"]


def test_django_connections_to_the_file_lose_the_automatic_checkpoint_and_one_thread_starts(
    tmp_path, django_db_blocker
):
    # A real Django connection to a file, whichever database the suite runs on.
    handler = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db")}})
    wrapper = handler["default"]
    checkpoint.enable(0.05)
    try:
        with django_db_blocker.unblock():
            wrapper.ensure_connection()
        assert wrapper.connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        thread = checkpoint._running
        assert thread is not None and thread.is_alive() and thread.path == str(tmp_path / "db")
        with thread.ran:
            assert thread.ran.wait_for(lambda: thread.runs >= 1, timeout=TIMEOUT)
        # A second connection shares the thread.
        other = ConnectionHandler({"default": dict(wrapper.settings_dict)})["default"]
        with django_db_blocker.unblock():
            other.ensure_connection()
        assert checkpoint._running is thread
        other.close()
    finally:
        checkpoint.disable()
        wrapper.close()
    assert checkpoint._running is None and not thread.is_alive()


def test_nothing_happens_for_an_in_memory_database(django_db_blocker):
    handler = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})
    wrapper = handler["default"]
    checkpoint.enable(0.05)
    try:
        with django_db_blocker.unblock():
            wrapper.ensure_connection()
        assert wrapper.connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
        assert checkpoint._running is None
    finally:
        checkpoint.disable()
        wrapper.close()


@pytest.mark.multiprocess
async def test_a_server_checkpoints_without_waiting_for_the_log_to_fill(tmp_path, template_database):  # noqa: F811
    from tests.servers import open_client

    server = live_server(tmp_path, template_database, DASHBOARD_SQLITE_CHECKPOINT_SECONDS="0.1")
    try:
        admin = await open_client(server.url, "admin", "admin-token")
        record = await admin.ok(
            "store.insert", bucket="metrics", data={"name": "cp", "value": 1, "unit": "", "timestamp": 5}
        )
        await admin.close()
        db_file = tmp_path / "db.sqlite3"
        deadline = time.monotonic() + TIMEOUT
        while True:
            frozen = sqlite3.connect(f"file:{db_file}?immutable=1", uri=True)
            try:
                keys = [row[0] for row in frozen.execute("SELECT key FROM metrics_metric WHERE name = 'cp'")]
            finally:
                frozen.close()
            # One reading is a few pages of log: SQLite's own checkpoint would wait for 1,000.
            if keys or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # noqa: ASYNC251  (no event tells when another process checkpoints)
        assert keys == [record["id"]]
    finally:
        server.stop()
