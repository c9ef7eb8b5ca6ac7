"""App config for the protocol layer: subscribes the fan-out to store changes."""
from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"

    def ready(self) -> None:
        from metrics.changes import records_changed

        from .fanout import publish_change

        records_changed.connect(publish_change, dispatch_uid="realtime-publish-change")
