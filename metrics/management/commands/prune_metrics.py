"""Retention for the metrics bucket: deletes old metrics in one transaction."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from metrics.durations import duration_argument, format_duration
from metrics.services import metrics_prune


class Command(BaseCommand):
    help = (
        "Deletes metrics whose timestamp (the one the client sent, ms since epoch) is older than "
        "--older-than. With --keep-per-name N, the newest N metrics of each name (by timestamp) are "
        "kept whatever their age, so a quiet series never disappears from the dashboard. "
        "One transaction: live subscribers get one push for the whole prune (from another "
        "process than the server's, that needs the shared channel layer, i.e. REDIS_URL)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=duration_argument, required=True, metavar="DURATION",
                            help="age of the metrics to delete, e.g. 7d, 12h, 30m")
        parser.add_argument("--keep-per-name", type=int, default=None, metavar="N",
                            help="always keep the newest N metrics of each name, even if older")

    def handle(self, *args: Any, **options: Any) -> None:
        keep = options["keep_per_name"]
        if keep is not None and keep < 0:
            raise CommandError("--keep-per-name must not be negative")
        older_than_ms = int(options["older_than"] * 1000)
        deleted = metrics_prune(older_than_ms=older_than_ms, keep_per_name=keep)
        kept = f", keeping the newest {keep} per name" if keep else ""
        self.stdout.write(f"deleted {deleted} metric(s) older than {format_duration(options['older_than'])}{kept}")
