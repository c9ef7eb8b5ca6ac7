"""App config for alert evaluation: connects the receivers that keep alert
states in step with the `metrics` and `alerts` buckets."""

from django.apps import AppConfig


class AlertingConfig(AppConfig):
    name = "alerting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import receivers

        # After metrics' receivers (INSTALLED_APPS order): a reading's derived
        # figures are in place before its alerts are evaluated.
        receivers.connect()
