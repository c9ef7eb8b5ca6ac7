"""Routes of the ingest endpoints, included at the site root."""

from django.urls import path

from . import views

urlpatterns = [
    path("api/metrics", views.metrics_json, name="ingest-json"),
    path("api/v2/write", views.influx_write, name="ingest-influx"),
    path("v1/metrics", views.otlp_metrics, name="ingest-otlp"),
]
