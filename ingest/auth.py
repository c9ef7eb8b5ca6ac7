"""The bearer-token check of the ingest endpoints: the WebSocket's tokens,
validator and permission rule, answered as HTTP 401/403."""

from __future__ import annotations

from django.http import HttpRequest

from realtime.auth import Session, TokenExpired, validate_token
from realtime.errors import FORBIDDEN, UNAUTHORIZED
from realtime.permissions import is_allowed

from .errors import HttpError

# What a write of readings is to the permission rule: an insert into the
# metrics bucket, so viewers are refused and DASHBOARD_ROLE_RULES' "write"
# lists apply as they do on the WebSocket.
OPERATION = "store.insert"
RESOURCE = "metrics"


def _unauthorized(message: str, error: str | None = None) -> HttpError:
    # RFC 6750: a request without credentials gets the bare challenge; one
    # with a bad token is told why.
    challenge = 'Bearer realm="dashboard"' + (f', error="{error}"' if error else "")
    return HttpError(401, UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


def bearer_token(request: HttpRequest) -> str:
    """The token of `Authorization: Bearer <token>` (InfluxDB clients send
    `Token <token>`, accepted too); raises 401 when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() not in {"bearer", "token"} or not token:
        raise _unauthorized("Authentication required")
    return token


def writer_session(request: HttpRequest) -> Session:
    """The session of the request's token, allowed to write readings."""
    try:
        session = validate_token(bearer_token(request))
    except TokenExpired as expired:
        raise _unauthorized(expired.message, "invalid_token") from None
    if session is None:
        raise _unauthorized("Invalid token", "invalid_token")
    if session.expired():
        raise _unauthorized("Token has expired", "invalid_token")
    if not is_allowed(session, OPERATION, RESOURCE):
        raise HttpError(403, FORBIDDEN, f"No permission for {OPERATION} on {RESOURCE}")
    return session
