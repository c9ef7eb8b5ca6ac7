"""Protocol error codes and close codes, and the exception that carries them."""
from __future__ import annotations

from metrics.errors import (  # noqa: F401  (re-exported: one list of codes)
    BUCKET_NOT_DEFINED,
    CONFLICT,
    NOT_FOUND,
    VALIDATION_ERROR,
    StoreError,
)

PARSE_ERROR = "PARSE_ERROR"
INVALID_REQUEST = "INVALID_REQUEST"
UNKNOWN_OPERATION = "UNKNOWN_OPERATION"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
QUERY_NOT_DEFINED = "QUERY_NOT_DEFINED"
RATE_LIMITED = "RATE_LIMITED"
INTERNAL_ERROR = "INTERNAL_ERROR"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_HEARTBEAT_TIMEOUT = 4001
CLOSE_SESSION_REVOKED = 4002
CLOSE_TOO_MANY_CONNECTIONS = 4003


class ProtocolError(StoreError):
    """An expected failure outside the store (parsing, auth, routing)."""
