"""Sessions and token validation.

`settings.DASHBOARD["TOKEN_VALIDATOR"]` names the function that turns a token
into a Session (or None when unknown); a deployment replaces it without
touching the consumer. The default is `accounts.tokens.validate_token`
(hashed tokens an operator issues); this module knows nothing of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from django.conf import settings
from django.dispatch import Signal
from django.utils.module_loading import import_string

from .errors import UNAUTHORIZED, ProtocolError


class Clock:
    """The wall clock sessions expire by; tests replace `clock` instead of
    sleeping until an expiry."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


clock = Clock()


@dataclass(frozen=True)
class Session:
    user_id: str
    roles: tuple[str, ...]
    expires_at: int | None = None  # ms since epoch
    # What revocation matches against (e.g. a token id); not sent to clients.
    token_id: str | None = field(default=None, compare=False)

    def expired(self, now_ms: int | None = None) -> bool:
        if self.expires_at is None:
            return False
        return (now_ms if now_ms is not None else clock.now_ms()) >= self.expires_at

    def as_login_result(self) -> dict:
        return {"userId": self.user_id, "roles": list(self.roles), "expiresAt": self.expires_at}


class TokenExpired(ProtocolError):
    def __init__(self) -> None:
        super().__init__(UNAUTHORIZED, "Token has expired")


TokenValidator = Callable[[str], "Session | None"]

# Sent (after commit) by whatever issues tokens, with `token_ids` (as in
# Session.token_id) and `reason`, when sessions opened with those tokens must
# end; the realtime app ends them on every server process.
sessions_revoked = Signal()


@cache
def _validator(path: str) -> TokenValidator:
    return import_string(path)


def validate_token(token: str) -> Session | None:
    """Runs the configured validator; may raise TokenExpired. Called in a worker thread."""
    return _validator(settings.DASHBOARD["TOKEN_VALIDATOR"])(token)
