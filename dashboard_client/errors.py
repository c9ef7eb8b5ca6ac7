"""The client's one error type, and the failures that happen on the client's side."""

from __future__ import annotations

from typing import Any

# Codes for failures the server never sends: the request did not get an answer.
CONNECTION_LOST = "CONNECTION_LOST"
TIMEOUT = "TIMEOUT"
SESSION_REVOKED = "SESSION_REVOKED"
ENDED = "ENDED"  # waiting on a subscription that was unsubscribed or closed


class DashboardError(Exception):
    """A request failed: `code` and `message` as in the protocol's error frame
    (`details` when the server sent some), or one of the client's own codes."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class ConnectionLost(DashboardError):
    """The connection dropped (or could not be made) before the reply came.

    For a write this means the outcome is unknown: the server may or may not
    have applied it. The client never retries a write by itself."""

    def __init__(self, message: str = "Connection lost before the reply arrived") -> None:
        super().__init__(CONNECTION_LOST, message)


class RequestTimeout(DashboardError):
    """No reply within the request timeout; for a write the outcome is unknown."""

    def __init__(self, message: str) -> None:
        super().__init__(TIMEOUT, message)


class SessionRevoked(DashboardError):
    """The server revoked the session (its token or user): the client stops
    reconnecting, and every request from then on raises this."""

    def __init__(self, reason: str) -> None:
        super().__init__(SESSION_REVOKED, reason)
