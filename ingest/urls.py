"""Routes of the ingest endpoints, included at the site root."""

from django.urls import path

from . import paths, views

urlpatterns = [
    path(paths.JSON_READINGS.lstrip("/"), views.metrics_json, name="ingest-json"),
    path(paths.LINE_PROTOCOL.lstrip("/"), views.influx_write, name="ingest-influx"),
    path(paths.OTLP.lstrip("/"), views.otlp_metrics, name="ingest-otlp"),
]
