"""Models behind the `metrics` and `alerts` buckets.

The protocol's key (`id`, a uuid string unless the client gives one) is the
`key` column; `seq` is the real primary key because a uuid has no insertion
order and the protocol returns records in insertion order.
"""
from __future__ import annotations

import time
import uuid

from django.db import models


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
        # Every write path (services, the admin, a shell) bumps the version
        # here, so (seq, version) identifies a record's content: the read
        # cache in selectors relies on it.
        now = now_ms()
        if self._state.adding:
            self.key = self.key or str(uuid.uuid4())
            self.version = 1
            self.created_at = self.created_at or now
            self.updated_at = self.created_at
        else:
            self.version += 1
            self.updated_at = now
        super().save(*args, **kwargs)


class Metric(BucketRecord):
    name = models.TextField(db_index=True)
    value = models.FloatField()
    unit = models.TextField(blank=True, default="")
    timestamp = models.FloatField(help_text="ms since epoch, as sent by the client")

    class Meta(BucketRecord.Meta):
        verbose_name = "metric"

    def __str__(self) -> str:
        return f"{self.name}={self.value}{self.unit}"


class Alert(BucketRecord):
    SEVERITIES = ("low", "medium", "high")

    metric = models.TextField()
    threshold = models.FloatField()
    severity = models.CharField(
        max_length=6, default="low", choices=[(s, s) for s in SEVERITIES]
    )
    timestamp = models.FloatField(help_text="ms since epoch, as sent by the client")

    class Meta(BucketRecord.Meta):
        verbose_name = "alert"

    def __str__(self) -> str:
        return f"{self.severity} alert on {self.metric} > {self.threshold}"
