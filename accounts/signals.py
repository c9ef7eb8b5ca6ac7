"""Ends live sessions when their token is revoked, changed or deleted, or its user deactivated.

Model signals rather than the services, so the Django admin, a shell and the
services all take the same path. After commit (a rolled-back revocation ends
nothing) this app sends realtime.auth's `sessions_revoked` signal (part of the
token-validator interface it implements); the realtime app receives it and
ends the sessions on every server process. Server processes also check live
sessions against their tokens every heartbeat, for revocations no signal
reaches (another process without a shared channel layer, QuerySet.update()).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from realtime.auth import sessions_revoked

from .models import ApiToken

TOKEN_REVOKED = "token revoked"
TOKEN_CHANGED = "token changed"
TOKEN_DELETED = "token deleted"
USER_DEACTIVATED = "user deactivated"


def end_sessions_on_commit(token_ids: list[str], reason: str) -> None:
    if token_ids:
        transaction.on_commit(lambda: sessions_revoked.send(sender=ApiToken, token_ids=token_ids, reason=reason))


def _token_saved(sender: Any, instance: ApiToken, created: bool, **kwargs: Any) -> None:
    if not created and instance.session_fields_changed():
        # A session keeps the role and expiry it logged in with, so a changed
        # role or expiry ends it too: the client logs in again and gets the new one.
        end_sessions_on_commit([str(instance.pk)], TOKEN_REVOKED if instance.revoked else TOKEN_CHANGED)
    instance.remember_session_fields()


def _token_deleted(sender: Any, instance: ApiToken, **kwargs: Any) -> None:
    # Also runs for each token when its user is deleted (cascade).
    end_sessions_on_commit([str(instance.pk)], TOKEN_DELETED)


def _user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if created or instance.is_active:
        return
    if update_fields is not None and "is_active" not in update_fields:
        return
    ids = ApiToken.objects.filter(user=instance, revoked=False).values_list("pk", flat=True)
    end_sessions_on_commit([str(pk) for pk in ids], USER_DEACTIVATED)


def connect() -> None:
    post_save.connect(_token_saved, sender=ApiToken, dispatch_uid="accounts-token-saved")
    post_delete.connect(_token_deleted, sender=ApiToken, dispatch_uid="accounts-token-deleted")
    post_save.connect(_user_saved, sender=get_user_model(), dispatch_uid="accounts-user-saved")
