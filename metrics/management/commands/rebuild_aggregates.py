"""Recomputes the tables derived from the raw readings (per-name figures, tiers)."""

from __future__ import annotations

import math
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from metrics import derived
from metrics.changes import note_change


class _Rollback(Exception):
    pass


def _close(a: tuple, b: tuple) -> bool:
    """Counts and units exactly, float figures up to rounding (sums kept by
    deltas differ from a fresh sum in the last bits)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=False):
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-6):
                return False
        elif x != y:
            return False
    return True


def differences(stored: dict, recomputed: dict) -> list[str]:
    found = []
    for key in sorted(set(stored) | set(recomputed), key=repr):
        mine, truth = stored.get(key), recomputed.get(key)
        if mine is None or truth is None or not _close(mine, truth):
            found.append(f"{key}: stored {mine}, from the readings {truth}")
    return found


class Command(BaseCommand):
    help = (
        "Recomputes every table derived from the raw metrics (the per-name figures behind metric-stats "
        "and metric-count, and the time-bucket tiers behind metric-series) from the readings, in one "
        "transaction. Idempotent. Run it after loading readings by SQL, bulk_create() or "
        "QuerySet.update(), which bypass the model signals that keep them right. Tier buckets older "
        "than a prune (whose readings are gone) are kept. --check compares instead of writing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="report where the maintained tables differ from a recomputation; exit 1 if they do",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        if options["check"]:
            self._check()
            return
        with transaction.atomic():
            derived.rebuild()
            note_change("metrics", None)
        self.stdout.write(
            f"rebuilt per-name figures and {len(derived.TIERS)} tiers in {time.monotonic() - started:.1f} s"
        )

    def _check(self) -> None:
        stored_stats, stored_tiers = derived.stored_stats(), derived.stored_rollups()
        try:
            with transaction.atomic():
                derived.rebuild()
                fresh_stats, fresh_tiers = derived.stored_stats(), derived.stored_rollups()
                raise _Rollback
        except _Rollback:
            pass
        found = differences(stored_stats, fresh_stats) + differences(stored_tiers, fresh_tiers)
        for line in found[:50]:
            self.stdout.write(line)
        if found:
            raise CommandError(f"{len(found)} derived row(s) differ from the readings")
        self.stdout.write(
            f"per-name figures ({len(stored_stats)} names) and tiers ({len(stored_tiers)} buckets) match the readings"
        )
