"""Signal receivers: every write path that changes readings or alerts (the
protocol's services, the Django admin, a shell, the bulk paths) reaches
alerting.evaluation through these, inside the writing transaction."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from metrics import derived
from metrics.models import Alert, Metric
from metrics.signals import readings_added_in_bulk, rows_removed_in_bulk

from . import evaluation


def _metric_saved(sender: Any, instance: Metric, created: bool = False, **kwargs: Any) -> None:
    if created and derived.deferring():
        return  # a batch: evaluated once per name when it ends (_added_in_bulk)
    # An edited reading may have changed its name: the old name's alerts
    # must be evaluated too (metrics.derived read the stored row before the save).
    before = derived.reading_before_save(instance)
    old = None if before is None else before.name
    names = [instance.name] if old is None or old == instance.name else [instance.name, old]
    evaluation.readings_changed(names)


def _metric_deleted(sender: Any, instance: Metric, **kwargs: Any) -> None:
    evaluation.readings_changed([instance.name])


def _alert_saved(sender: Any, instance: Alert, created: bool = False, **kwargs: Any) -> None:
    evaluation.alert_saved(instance, created)


def _added_in_bulk(sender: Any, names: list[str], **kwargs: Any) -> None:
    evaluation.readings_changed(names)


def _removed_in_bulk(sender: Any, names: list[str] | None, **kwargs: Any) -> None:
    if sender is Alert:
        evaluation.alerts_cleared()
    elif sender is Metric:
        if names is None:
            evaluation.all_readings_changed()
        else:
            evaluation.readings_changed(names)


def connect() -> None:
    post_save.connect(_metric_saved, sender=Metric, dispatch_uid="alerting-metric-saved")
    post_delete.connect(_metric_deleted, sender=Metric, dispatch_uid="alerting-metric-deleted")
    post_save.connect(_alert_saved, sender=Alert, dispatch_uid="alerting-alert-saved")
    rows_removed_in_bulk.connect(_removed_in_bulk, dispatch_uid="alerting-rows-removed-in-bulk")
    readings_added_in_bulk.connect(_added_in_bulk, dispatch_uid="alerting-readings-added-in-bulk")
