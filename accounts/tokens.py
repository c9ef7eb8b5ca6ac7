"""The token validator for the realtime server: raw token in, Session out.

Named by settings.DASHBOARD["TOKEN_VALIDATOR"]; the server calls it in the
database thread for every auth.login.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from realtime.auth import Session, TokenExpired

from .hashing import token_digest, token_prefix
from .models import ApiToken

# last_used_at is for operators ("is this token still in use?"), not an audit
# log: writing it at most once a minute per token keeps logins read-only.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Issued tokens are 43 characters; anything much longer is not one of ours.
MAX_TOKEN_LENGTH = 512


def validate_token(token: str) -> Session | None:
    """The session for a stored token; None when it is unknown, revoked or its
    user is inactive; raises TokenExpired when it has expired."""
    digest = token_digest(token)
    match: ApiToken | None = None
    for candidate in _candidates(token):
        # Every candidate is compared, in constant time, so the time taken
        # says nothing about how much of a digest matched.
        if hmac.compare_digest(candidate.digest, digest):
            match = candidate
    if match is None or match.revoked or not match.user.is_active:
        return None
    now = timezone.now()
    if match.expired(now):
        raise TokenExpired()
    _note_use(match, now)
    return Session(
        user_id=match.user.get_username(),
        roles=(match.role,),
        expires_at=to_ms(match.expires_at),
        token_id=str(match.pk),
    )


def _candidates(token: str) -> list[ApiToken]:
    # Only printable ASCII can be one of our tokens; anything else (NUL bytes
    # that PostgreSQL refuses, surrogates) is not looked up at all.
    if len(token) > MAX_TOKEN_LENGTH or not (token.isascii() and token.isprintable()):
        return []
    return list(ApiToken.objects.select_related("user").filter(prefix=token_prefix(token)))


def _note_use(token: ApiToken, now: datetime) -> None:
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    # A queryset update: no model signals (nothing about the session changed),
    # and the condition keeps concurrent processes from all writing.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    ).update(last_used_at=now)


def to_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def invalid_among(token_ids: list[str]) -> dict[str, str]:
    """Of these token ids (Session.token_id), those whose sessions must end,
    with why: deleted, revoked, expired, or their user deactivated. The
    server asks every heartbeat (settings.DASHBOARD["TOKEN_RECHECK"]), so a
    revocation that no signal announced (another process without a shared
    channel layer, a QuerySet.update()) still ends the sessions."""
    now = timezone.now()
    found: dict[str, str] = {}
    for start in range(0, len(token_ids), 500):
        chunk = [token_id for token_id in token_ids[start : start + 500] if token_id.isdigit()]
        rows = ApiToken.objects.filter(pk__in=chunk).values_list("pk", "revoked", "expires_at", "user__is_active")
        present = set()
        for pk, revoked, expires_at, user_active in rows:
            present.add(str(pk))
            if revoked:
                found[str(pk)] = "token revoked"
            elif not user_active:
                found[str(pk)] = "user deactivated"
            elif expires_at is not None and expires_at <= now:
                found[str(pk)] = "token expired"
        for token_id in token_ids[start : start + 500]:
            if token_id not in present:
                found[token_id] = "token deleted"
    return found
