"""States for the alerts that exist already (each in its computed state,
`since` null, no transition), and the webhook lease's one row."""

from typing import Any

from django.db import migrations


def fill(apps: Any, schema_editor: Any) -> None:
    Alert = apps.get_model("metrics", "Alert")
    Metric = apps.get_model("metrics", "Metric")
    AlertStatus = apps.get_model("alerting", "AlertStatus")
    WebhookLease = apps.get_model("alerting", "WebhookLease")
    using = schema_editor.connection.alias
    WebhookLease.objects.using(using).get_or_create(id=1, defaults={"holder": "", "expires_at": 0})
    newest: dict[str, float | None] = {}
    for alert in Alert.objects.using(using).order_by("seq").iterator():
        if alert.metric not in newest:
            newest[alert.metric] = (
                Metric.objects.using(using)
                .filter(name=alert.metric)
                .order_by("-seq")
                .values_list("value", flat=True)
                .first()
            )
        value = newest[alert.metric]
        state = "no-data" if value is None else ("firing" if value > alert.threshold else "ok")
        AlertStatus.objects.using(using).update_or_create(
            alert_id=alert.seq,
            defaults={
                "alert_key": alert.key,
                "metric": alert.metric,
                "threshold": alert.threshold,
                "severity": alert.severity,
                "state": state,
                "since": None,
                "value": value,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("alerting", "0001_initial")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
