"""App config for the protocol layer: subscribes the hubs to store changes and session revocations."""

from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"

    def ready(self) -> None:
        from metrics.changes import records_changed
        from telemetry import instruments

        from .auth import sessions_revoked
        from .hub import publish_change, publish_revocation, telemetry_state

        records_changed.connect(publish_change, dispatch_uid="realtime-publish-change")
        sessions_revoked.connect(publish_revocation, dispatch_uid="realtime-publish-revocation")
        instruments.set_state_reader(telemetry_state)
