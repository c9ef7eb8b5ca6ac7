"""Writes to API tokens: issue, revoke, and seed the development demo tokens.

Ending live sessions is not done here but by the model signals (signals.py),
so a revocation made in the Django admin or a shell ends them the same way.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from .hashing import token_digest
from .models import ApiToken
from .roles import ADMIN, VIEWER

# The seed's demo tokens (docs/protocol.md, Auth): raw token -> (user, role).
DEMO_TOKENS = {
    "admin-token": ("admin-1", ADMIN),
    "viewer-token": ("viewer-1", VIEWER),
}


@transaction.atomic
def token_create(
    *,
    user: Any,  # the project's user model (AUTH_USER_MODEL)
    role: str,
    label: str = "",
    expires_at: datetime | None = None,
    raw: str | None = None,
) -> tuple[ApiToken, str]:
    """Issues a token and returns it with its raw value, the only time that
    value exists outside the client. `raw` is for known demo values only."""
    token = ApiToken(user=user, role=role, label=label, expires_at=expires_at)
    raw = token.set_secret(raw)
    token.full_clean()
    token.save()
    return token, raw


@transaction.atomic
def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revokes a token; its live sessions end after commit, on every process."""
    if not token.revoked:
        token.revoked = True
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked", "revoked_at"])
    return token


@transaction.atomic
def demo_tokens_seed() -> list[ApiToken]:
    """Makes the seed's demo tokens valid (idempotent): users admin-1 and
    viewer-1 with tokens `admin-token` and `viewer-token`, never expiring.

    For development and tests only: anyone who has read the protocol knows
    these tokens (the seed_demo command refuses to run with DEBUG off).
    """
    User = get_user_model()
    tokens = []
    for raw, (username, role) in DEMO_TOKENS.items():
        # A token-only account: no password, so it cannot sign in to the admin.
        user, _ = User.objects.get_or_create(
            **{User.USERNAME_FIELD: username}, defaults={"password": make_password(None)}
        )
        if not user.is_active:
            user.is_active = True
            user.save(update_fields=["is_active"])
        token = ApiToken.objects.filter(digest=token_digest(raw)).first()
        if token is None:
            token, _ = token_create(user=user, role=role, label="demo token (seed_demo)", raw=raw)
        elif (token.user_id, token.role, token.expires_at, token.revoked) != (user.pk, role, None, False):
            # Someone revoked or changed a demo token: seeding restores it.
            token.user, token.role, token.expires_at = user, role, None
            token.revoked, token.revoked_at = False, None
            token.save()
        tokens.append(token)
    return tokens
