"""Retention of the alert transitions (alert-events, the admin's history)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from alerting.history import DEFAULT_BATCH, prune_transitions
from dashboard_client.durations import duration_argument, format_duration

DEFAULT_OLDER_THAN = 90 * 86400  # seconds


class Command(BaseCommand):
    help = (
        "Deletes alert transitions older than --older-than (default 90d), in batches of --batch-size "
        "rows, each its own transaction. Transitions the webhook has not sent yet are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration_argument,
            default=DEFAULT_OLDER_THAN,
            metavar="DURATION",
            help="age of the transitions to delete, e.g. 90d, 12h",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH,
            metavar="ROWS",
            help=f"rows per transaction (default {DEFAULT_BATCH})",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be positive")
        older_than = options["older_than"]
        deleted = prune_transitions(older_than_ms=older_than * 1000, batch=options["batch_size"])
        self.stdout.write(f"deleted {deleted} alert transition(s) older than {format_duration(older_than)}")
