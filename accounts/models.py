"""API tokens: hashed credentials an operator issues to a user, with one role each.

The raw token is handed out once (by the admin or `create_token`) and never
stored: a row keeps a short clear prefix for indexed lookup and the SHA-256
digest of the whole token (see hashing.py for why a fast hash is right).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from .hashing import new_raw_token, token_digest, token_prefix
from .roles import VIEWER, validate_role_name

# Fields whose change ends the token's live sessions (see signals.py): a
# session carries the role and expiry it was opened with.
SESSION_FIELDS = ("user_id", "role", "expires_at", "revoked")


class ApiToken(models.Model):
    # The raw value right after the admin issued it, for the one page that
    # shows it; never stored.
    raw_token: str | None = None

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    role = models.CharField(max_length=64, default=VIEWER, validators=[validate_role_name])
    label = models.CharField(max_length=200, blank=True, help_text="What the token is for (optional).")
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked = models.BooleanField(default=False, help_text="Revoking ends the token's live sessions at once.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API token"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        # Shown in the admin and its log: the clear prefix only.
        return f"{self.prefix}… ({self.role}) of {self.user}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.expires_at is not None:
            # Whole seconds, as the admin form shows it: saving the form
            # unchanged must not look like a new expiry (which ends sessions).
            self.expires_at = self.expires_at.replace(microsecond=0)
        if self.revoked and self.revoked_at is None:
            self.revoked_at = timezone.now()
        super().save(*args, **kwargs)

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any) -> ApiToken:
        token = super().from_db(db, field_names, values)
        token.remember_session_fields()
        return token

    def remember_session_fields(self) -> None:
        """Keeps what the stored row says, so a save can tell what changed."""
        self._stored = {name: self.__dict__.get(name) for name in SESSION_FIELDS}

    def session_fields_changed(self) -> bool:
        stored = getattr(self, "_stored", None)
        # A row we did not load: assume the worst.
        return stored is None or any(self.__dict__.get(name) != value for name, value in stored.items())

    def set_secret(self, raw: str | None = None) -> str:
        """Gives the token a new secret and returns it; only the digest is kept.

        `raw` is for seeding known demo values; otherwise a random one is made.
        """
        raw = raw or new_raw_token()
        self.prefix = token_prefix(raw)
        self.digest = token_digest(raw)
        return raw

    def expired(self, now: Any = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())
