"""manage.py seed_demo [--force]: the seed's demo tokens, for development and tests."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import DEMO_TOKENS, demo_tokens_seed


class Command(BaseCommand):
    help = (
        "Creates users admin-1 and viewer-1 with the well-known tokens admin-token "
        "and viewer-token (idempotent). Refuses to run with DEBUG off unless --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="run even with DEBUG off (benchmarks): anyone can use these tokens",
        )

    def handle(self, *args, force: bool, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError(
                "DEBUG is off: the demo tokens are public knowledge and would open this "
                "server to anyone. Use create_token, or pass --force for a throwaway server."
            )
        tokens = demo_tokens_seed()
        for raw, token in zip(DEMO_TOKENS, tokens, strict=False):
            self.stdout.write(f"{raw}: user {token.user.get_username()}, role {token.role}")
