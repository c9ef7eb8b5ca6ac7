"""Retention: deletes old raw metrics, and old tier buckets, in bounded batches."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dashboard_client.durations import duration_argument, format_duration
from metrics import derived
from metrics.retention import DEFAULT_BATCH, prune_raw, prune_tiers, retention_ms_by_tier


class Command(BaseCommand):
    help = (
        "Deletes metrics whose timestamp (the one the client sent, ms since epoch) is older than "
        "--older-than (default: DASHBOARD_RETENTION_RAW, 7d), then tier buckets older than their "
        "tier's retention (DASHBOARD_RETENTION_10S, _1M, _10M, _1H, _1D), so old ranges stay "
        "chartable at a coarser step after their readings are gone. With --keep-per-name N, the "
        "newest N metrics of each name (by timestamp) are kept whatever their age. Deletes in "
        "batches of --batch-size rows, each its own short transaction and one push to live "
        "subscribers (from another process than the server's, that needs REDIS_URL or SQLite)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=duration_argument,
            default=None,
            metavar="DURATION",
            help="age of the raw metrics to delete, e.g. 7d, 12h, 30m",
        )
        parser.add_argument(
            "--keep-per-name",
            type=int,
            default=None,
            metavar="N",
            help="always keep the newest N metrics of each name, even if older",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH,
            metavar="ROWS",
            help=f"rows per transaction (default {DEFAULT_BATCH})",
        )
        parser.add_argument("--raw-only", action="store_true", help="leave the tiers alone")

    def handle(self, *args: Any, **options: Any) -> None:
        keep = options["keep_per_name"]
        if keep is not None and keep < 0:
            raise CommandError("--keep-per-name must not be negative")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be positive")
        retention = settings.DASHBOARD["RETENTION"]
        older_than = options["older_than"] if options["older_than"] is not None else retention["raw"]
        if older_than is not None:
            deleted = prune_raw(older_than_ms=older_than * 1000, keep_per_name=keep, batch=options["batch_size"])
            kept = f", keeping the newest {keep} per name" if keep else ""
            self.stdout.write(f"deleted {deleted} metric(s) older than {format_duration(older_than)}{kept}")
        else:
            self.stdout.write("raw metrics are kept for ever (DASHBOARD_RETENTION_RAW=forever)")
        if options["raw_only"]:
            return
        by_tier = retention_ms_by_tier(retention)
        deleted_buckets = prune_tiers(retention_ms=by_tier, batch=options["batch_size"])
        parts = [
            f"{derived.TIER_NAMES[res]}: kept for ever"
            if (keep_ms := by_tier[res]) is None
            else f"{derived.TIER_NAMES[res]}: {deleted_buckets[res]} older than {format_duration(keep_ms / 1000)}"
            for res in derived.TIERS
        ]
        self.stdout.write("tier buckets deleted: " + ", ".join(parts))
