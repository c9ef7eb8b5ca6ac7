"""App config for the operations endpoints (telemetry/endpoints.py)."""

import logging

from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "telemetry"

    def ready(self) -> None:
        from .logfilters import QuietProbes

        # uvicorn configures its access logger itself, before Django starts;
        # settings.LOGGING's handler filter covers Django's own loggers.
        logging.getLogger("uvicorn.access").addFilter(QuietProbes())
