"""App config for the data layer: connects the model signals that report
changes and keep the derived tables (per-name figures, tiers) right."""

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import changes, derived

        changes.connect_model_signals()
        derived.connect_model_signals()
