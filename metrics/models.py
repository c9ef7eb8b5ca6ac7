"""Models behind the `metrics` and `alerts` buckets.

The protocol's key (`id`, a uuid string unless the client gives one) is the
`key` column; `seq` is the real primary key because a uuid has no insertion
order and the protocol returns records in insertion order.
"""

from __future__ import annotations

import time
import uuid

from django.db import models, transaction


def now_ms() -> int:
    return int(time.time() * 1000)


class BucketRecord(models.Model):
    seq = models.BigAutoField(primary_key=True)
    key = models.CharField(max_length=255, unique=True, editable=False)
    version = models.PositiveIntegerField(default=1, editable=False)
    created_at = models.BigIntegerField(editable=False, help_text="ms since epoch")
    updated_at = models.BigIntegerField(editable=False, help_text="ms since epoch")

    class Meta:
        abstract = True
        ordering = ["seq"]

    def save(self, *args, **kwargs) -> None:
        self.stamp()
        super().save(*args, **kwargs)

    def stamp(self) -> None:
        """Sets the key, version and times for the write about to happen.
        Every write path (save: services, the admin, a shell; the services'
        multi-row insert) comes here, so (seq, version) identifies a record's
        content: the read cache in metrics.records relies on it."""
        now = now_ms()
        if self._state.adding:
            self.key = self.key or str(uuid.uuid4())
            self.version = 1
            self.created_at = self.created_at or now
            self.updated_at = self.created_at
        else:
            self.version += 1
            self.updated_at = now


class Metric(BucketRecord):
    name = models.TextField()
    value = models.FloatField()
    unit = models.TextField(blank=True, default="")
    timestamp = models.FloatField(help_text="ms since epoch, as sent by the client")

    class Meta(BucketRecord.Meta):
        verbose_name = "metric"
        indexes = [
            # The newest readings of a name (latest-metrics-by-name, metric-stats' `last`).
            models.Index(fields=["name", "seq"], name="metric_name_seq"),
            # A name's new min or max after its extreme is deleted, without a scan.
            models.Index(fields=["name", "value"], name="metric_name_value"),
            # A name's readings in a time range (series edges, tier repair, prune).
            models.Index(fields=["name", "timestamp"], name="metric_name_timestamp"),
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value}{self.unit}"

    def save(self, *args, **kwargs) -> None:
        # The derived tables (metrics.derived) are updated by the save signals;
        # one transaction makes the reading and its figures land together even
        # from a shell in autocommit mode. No savepoint when already inside one.
        with transaction.atomic(using=kwargs.get("using"), savepoint=False):
            super().save(*args, **kwargs)


class MetricNameStats(models.Model):
    """Per-name figures of the stored readings, maintained on every write
    (metrics.derived): what `metric-stats` and `metric-count` read instead of
    aggregating the whole bucket."""

    name = models.TextField(primary_key=True)
    count = models.BigIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()
    # The newest reading by insertion order.
    last_seq = models.BigIntegerField()
    last_value = models.FloatField()
    last_unit = models.TextField()

    class Meta:
        verbose_name = "metric name summary"
        verbose_name_plural = "metric name summaries"

    def __str__(self) -> str:
        return f"{self.name}: {self.count} readings"


class MetricRollup(models.Model):
    """Count, sum, min and max of one name's readings whose `timestamp` falls
    in [start, start + resolution), for each resolution of metrics.derived.TIERS.
    Kept longer than the raw readings (retention by tier)."""

    pk = models.CompositePrimaryKey("name", "resolution", "start")
    name = models.TextField()
    resolution = models.IntegerField(help_text="bucket size in ms")
    start = models.BigIntegerField(help_text="ms since epoch, a multiple of resolution")
    count = models.BigIntegerField()
    sum = models.FloatField()
    min = models.FloatField()
    max = models.FloatField()

    class Meta:
        verbose_name = "metric rollup"

    def __str__(self) -> str:
        return f"{self.name} [{self.start}, +{self.resolution} ms): {self.count}"


class MetricHorizon(models.Model):
    """How far back each level is complete: readings (resolution 0) or tier
    buckets with an earlier timestamp may have been pruned."""

    resolution = models.IntegerField(primary_key=True, help_text="0 for the raw readings")
    pruned_before = models.FloatField(help_text="ms since epoch")

    def __str__(self) -> str:
        return f"resolution {self.resolution}: pruned before {self.pruned_before}"


class Alert(BucketRecord):
    SEVERITIES = ("low", "medium", "high")

    metric = models.TextField()
    threshold = models.FloatField()
    severity = models.CharField(max_length=6, default="low", choices=[(s, s) for s in SEVERITIES])
    timestamp = models.FloatField(help_text="ms since epoch, as sent by the client")

    class Meta(BucketRecord.Meta):
        verbose_name = "alert"

    def __str__(self) -> str:
        return f"{self.severity} alert on {self.metric} > {self.threshold}"
