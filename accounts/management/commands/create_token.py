"""manage.py create_token --user NAME --role viewer [--expires 30d] [--label TEXT]: issue an API token."""

from __future__ import annotations

import re
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.roles import known_roles
from accounts.services import token_create

DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '12h', '30d', '2w'."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r}: expected a positive number and a unit s/m/h/d/w, e.g. 30d")
    return timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})


class Command(BaseCommand):
    help = "Issues an API token for a user and prints it on standard output, once: only its hash is stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username of an existing user")
        parser.add_argument(
            "--role", required=True, help=f"one of the known roles (default: {', '.join(known_roles())})"
        )
        parser.add_argument("--expires", help="lifetime, e.g. 30d, 12h, 2w (default: never expires)")
        parser.add_argument("--label", default="", help="what the token is for")
        parser.add_argument(
            "--create-user", action="store_true", help="create the user (without a password) if missing"
        )

    def handle(
        self, *args, user: str, role: str, expires: str | None, label: str, create_user: bool, **options
    ) -> None:
        if role not in known_roles():
            raise CommandError(
                f"unknown role {role!r}: expected one of {', '.join(known_roles())} "
                "(other roles need a rule in DASHBOARD['ROLE_RULES'])"
            )
        try:
            expires_at = timezone.now() + parse_duration(expires) if expires else None
        except ValueError as error:
            raise CommandError(str(error)) from None
        User = get_user_model()
        try:
            owner = User.objects.get_by_natural_key(user)
        except User.DoesNotExist:
            if not create_user:
                raise CommandError(f"no user {user!r} (create it, or pass --create-user)") from None
            owner = User.objects.create_user(**{User.USERNAME_FIELD: user})
        if not owner.is_active:
            raise CommandError(f"user {user!r} is inactive: its tokens would not work")
        try:
            token, raw = token_create(user=owner, role=role, label=label, expires_at=expires_at)
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        expiry = f"expires {token.expires_at.isoformat()}" if token.expires_at else "never expires"
        # Details on stderr, the token alone on stdout: TOKEN=$(manage.py create_token ...)
        self.stderr.write(
            f"Token {token.pk} for {owner.get_username()}, role {role}, {expiry}. "
            "Store it now: it cannot be shown again."
        )
        self.stdout.write(raw)
