"""Delivers queued alert transitions to DASHBOARD_ALERT_WEBHOOK_URL.

Transitions are queued in the database by the transaction that records them
(`AlertTransition.pending`). Each server process runs one `Sender` thread;
the one holding the lease (`WebhookLease`, claimed and renewed by an atomic
UPDATE, so it works the same on SQLite and PostgreSQL) POSTs the queue's head,
oldest first, one at a time: a failure or timeout is retried with exponential
backoff and nothing behind it is sent first, so the receiver sees
transitions in order. A process that dies holding the lease loses it when it
expires; its unfinished transition is sent again by the next holder (delivery
is at least once: the `X-Alert-Transition-Id` header lets a receiver drop a
repeat). The write path only inserts a row: a slow or absent receiver never
blocks it. docs/alerts.md.
"""

from __future__ import annotations

import atexit
import http.client
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

from metrics.models import now_ms

logger = logging.getLogger(__name__)

LEASE_ROW = 1
# Failures are logged at most this often (with how many were not), so a
# receiver down for hours does not flood the log.
LOG_EVERY_SECONDS = 60.0
# The lease outlasts a POST's deadline by at least this much, and at least
# twice the deadline: time for the database work of the attempt around the
# POST (renewing the lease, marking the transition) on a loaded server.
LEASE_MARGIN_SECONDS = 5.0
DEFAULT_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Config:
    url: str
    timeout: float
    backoff: float
    backoff_max: float
    give_up_after: float  # seconds after the transition; 0: never
    poll: float
    lease: float

    @classmethod
    def from_settings(cls) -> Config:
        limits = settings.DASHBOARD
        timeout = float(limits["ALERT_WEBHOOK_TIMEOUT_SECONDS"])
        if not (math.isfinite(timeout) and timeout > 0):
            logger.warning(
                "alert webhook: DASHBOARD_ALERT_WEBHOOK_TIMEOUT_SECONDS must be a positive number; using %g",
                DEFAULT_TIMEOUT_SECONDS,
            )
            timeout = DEFAULT_TIMEOUT_SECONDS
        lease = float(limits["ALERT_WEBHOOK_LEASE_SECONDS"])
        least = min_lease(timeout)
        if not lease >= least:
            # A POST must end well within the lease, or another process could
            # take over and send the same transition while it is under way.
            logger.warning(
                "alert webhook: DASHBOARD_ALERT_WEBHOOK_LEASE_SECONDS %g is too short for a %g s timeout; using %g",
                lease,
                timeout,
                least,
            )
            lease = least
        return cls(
            url=str(limits["ALERT_WEBHOOK_URL"]),
            timeout=timeout,
            backoff=float(limits["ALERT_WEBHOOK_BACKOFF_SECONDS"]),
            backoff_max=float(limits["ALERT_WEBHOOK_BACKOFF_MAX_SECONDS"]),
            give_up_after=float(limits["ALERT_WEBHOOK_GIVE_UP_SECONDS"]),
            poll=float(limits["ALERT_WEBHOOK_POLL_SECONDS"]),
            lease=lease,
        )

    def delay_after(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones."""
        return float(min(self.backoff * 2 ** min(attempts - 1, 30), self.backoff_max))


def min_lease(timeout: float) -> float:
    """The shortest lease for POSTs that end `timeout` seconds after they start."""
    return timeout + max(2 * timeout, LEASE_MARGIN_SECONDS)


def _tables() -> tuple[str, str]:
    from .models import AlertTransition, WebhookLease

    return AlertTransition._meta.db_table, WebhookLease._meta.db_table


def claim_lease(holder: str, lease_seconds: float) -> bool:
    """Takes or renews the lease for `holder`; False while another holds it."""
    _, lease = _tables()
    now = now_ms()
    claim = f"UPDATE {lease} SET holder = %s, expires_at = %s WHERE id = %s AND (holder = %s OR expires_at < %s)"
    params: list[Any] = [holder, now + int(lease_seconds * 1000), LEASE_ROW, holder, now]
    with connection.cursor() as cursor:
        cursor.execute(claim, params)
        if cursor.rowcount:
            return True
        # The row is made by the migration; made here if it is missing (a
        # flushed database), then claimed like any other time.
        cursor.execute(
            f"INSERT INTO {lease} (id, holder, expires_at) VALUES (%s, '', 0) ON CONFLICT (id) DO NOTHING", [LEASE_ROW]
        )
        if not cursor.rowcount:
            return False
        cursor.execute(claim, params)
        return bool(cursor.rowcount)


def release_lease(holder: str) -> None:
    _, lease = _tables()
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {lease} SET expires_at = 0 WHERE id = %s AND holder = %s", [LEASE_ROW, holder])


class Deadline:
    """Ends one POST at its deadline, whatever the receiver does. A socket
    timeout bounds each read alone, so a receiver that drips its answer a
    byte at a time could hold a POST past the lease; instead a timer shuts
    the connection's socket down at the deadline, which ends a blocked read
    or write at once, and a connection made after it (a slow connect) is
    never used. Name resolution is not interrupted, but nothing is sent once
    the deadline has passed."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._socket is not None:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def watch(self, sock: socket.socket | None) -> None:
        """The connection is made: shut down at the deadline; refused past it."""
        with self._lock:
            if self.expired or sock is None:
                raise TimeoutError("connected after the deadline")
            self._socket = sock


def post(url: str, body: dict[str, Any], transition_id: int, timeout: float) -> str | None:
    """POSTs one transition and ends within `timeout` seconds in all (see
    Deadline); None when the receiver answered 2xx, else why not. A redirect
    is not followed: it is a failure (following it with a GET, as clients do,
    would make a 2xx elsewhere pass for delivery)."""
    headers = {"Content-Type": "application/json", "X-Alert-Transition-Id": str(transition_id)}
    with Deadline(timeout) as deadline:
        try:
            target = urllib.parse.urlsplit(url)
            if target.scheme not in ("http", "https") or not target.hostname:
                raise ValueError("not an http or https URL")
            kind = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
            conn = kind(target.hostname, target.port, timeout=timeout)
        except ValueError as error:  # a bad URL or port
            return f"{type(error).__name__}: {error}"
        try:
            conn.connect()
            deadline.watch(conn.sock)
            path = (target.path or "/") + (f"?{target.query}" if target.query else "")
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            # The status is the answer; the body is not waited for.
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as error:  # refused, timed out, reset, cut at the deadline
            if deadline.expired:
                return f"no answer within {timeout:g} s"
            return f"{type(error).__name__}: {error}"
        finally:
            conn.close()
    return None if 200 <= status < 300 else f"HTTP {status}"


def _seconds_until(at_ms: int) -> float:
    return max(at_ms - now_ms(), 0) / 1000


class Sender:
    """One process's sender: `step()` does one unit of work and says how long
    to wait before the next; `run()` loops it (the thread's body)."""

    def __init__(self, config: Config, holder: str | None = None) -> None:
        self.config = config
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.holding = False
        self.delivered = 0
        self.failures = 0
        self._last_logged = 0.0
        self._unlogged = 0

    def step(self) -> float:
        from .models import AlertTransition
        from .selectors import transition_body

        config = self.config
        queue = AlertTransition.objects.filter(pending=True).order_by("id")
        # Only reads while there is nothing to send: an idle sender writes
        # nothing (on SQLite every commit would make the hub's watch of
        # other connections' writes re-evaluate every live query).
        head = queue.first()
        if head is None:
            if self.holding:
                # Drained: let whichever process has the next transition
                # send it at once, and leave no lease behind at a stop.
                release_lease(self.holder)
                self.holding = False
            return config.poll
        if head.next_attempt_at is not None and head.next_attempt_at > now_ms():
            return min(_seconds_until(head.next_attempt_at), config.poll)
        self.holding = claim_lease(self.holder, config.lease)
        if not self.holding:
            return config.poll
        head = queue.first()  # as it is now that the lease is ours
        now = now_ms()
        if head is None:
            return config.poll
        if head.next_attempt_at is not None and head.next_attempt_at > now:
            return min(_seconds_until(head.next_attempt_at), config.poll)
        table, _ = _tables()
        if config.give_up_after > 0 and head.attempts > 0 and now - head.at > config.give_up_after * 1000:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET pending = %s, given_up_at = %s WHERE id = %s", [False, now, head.id]
                )
            logger.error(
                "alert webhook: gave up on transition %s after %s attempts (older than %.0f s)",
                head.id,
                head.attempts,
                config.give_up_after,
            )
            return 0.0
        failure = post(config.url, transition_body(head), head.id, config.timeout)
        attempts = head.attempts + 1
        done = now_ms()
        with connection.cursor() as cursor:
            if failure is None:
                cursor.execute(
                    f"UPDATE {table} SET pending = %s, delivered_at = %s, attempts = %s WHERE id = %s",
                    [False, done, attempts, head.id],
                )
            else:
                retry_at = done + int(config.delay_after(attempts) * 1000)
                cursor.execute(
                    f"UPDATE {table} SET attempts = %s, next_attempt_at = %s WHERE id = %s",
                    [attempts, retry_at, head.id],
                )
        if failure is None:
            self.delivered += 1
            if self.failures:
                logger.info("alert webhook: delivering again after %s failed attempts", self.failures)
                self.failures = 0
            return 0.0
        self.failures += 1
        self._log_failure(f"alert webhook: transition {head.id} not delivered ({failure}); attempt {attempts}")
        return min(config.delay_after(attempts), config.poll)

    def _log_failure(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_logged < LOG_EVERY_SECONDS and self._last_logged:
            self._unlogged += 1
            return
        suffix = f" ({self._unlogged} more failures not logged)" if self._unlogged else ""
        self._last_logged, self._unlogged = now, 0
        logger.warning("%s%s; next report in %.0f s at most", message, suffix, LOG_EVERY_SECONDS)

    def run(self) -> None:
        while not self.stopping.is_set():
            # Cleared before the step: a wake during it is not lost.
            self.wakeup.clear()
            close_old_connections()
            try:
                delay = self.step()
            except Exception:
                self._log_failure("alert webhook sender failed")
                logger.debug("alert webhook sender failure", exc_info=True)
                delay = self.config.poll
            if delay > 0:
                self.wakeup.wait(delay)
        try:
            release_lease(self.holder)
        except Exception:
            logger.exception("alert webhook: could not release the lease")
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.wakeup.set()


_sender: Sender | None = None
_thread: threading.Thread | None = None


def start() -> Sender | None:
    """Starts this process's sender thread when a webhook URL is configured
    (a server process calls it once, from dashboard_project/asgi.py)."""
    global _sender, _thread
    config = Config.from_settings()
    if not config.url or _sender is not None:
        return _sender
    if urllib.parse.urlsplit(config.url).scheme not in ("http", "https"):
        logger.error("alert webhook: DASHBOARD_ALERT_WEBHOOK_URL must be an http or https URL; not sending")
        return None
    _sender = Sender(config)
    _thread = threading.Thread(target=_sender.run, name="alert-webhook", daemon=True)
    _thread.start()
    # Where the interpreter exits normally (runserver, a shell) the lease is
    # released at once; uvicorn ends by re-raising SIGTERM, so there only a
    # lease held mid-delivery is left, to expire.
    atexit.register(stop)
    # Scheme and host only: the path or query may hold a secret.
    target = urllib.parse.urlsplit(config.url)
    logger.info("alert webhook: sending transitions to %s://%s", target.scheme, target.hostname)
    return _sender


def stop(timeout: float = 5.0) -> None:
    global _sender, _thread
    if _sender is not None:
        _sender.stop()
    if _thread is not None:
        _thread.join(timeout)
    _sender = _thread = None


def wake() -> None:
    """A transition was queued (after commit): the local sender looks now."""
    if _sender is not None:
        _sender.wakeup.set()
