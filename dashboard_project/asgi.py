"""ASGI entry point: HTTP goes to Django, WebSockets to the dashboard consumer."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard_project.settings")
# Django must be set up before the consumer (and its models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from alerting import webhook  # noqa: E402
from ingest.body_cap import capped_ingest_bodies  # noqa: E402
from metrics import checkpoint  # noqa: E402
from realtime.daphne_close import with_daphne_closes  # noqa: E402
from realtime.origins import allowed_hosts_origin_validator  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.shutdown import lifespan  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Ingest bodies are cut at their limit before Django spools them.
        "http": capped_ingest_bodies(django_asgi_app),
        # Under runserver (daphne), close frames keep the code and reason sent.
        "websocket": with_daphne_closes(allowed_hosts_origin_validator(URLRouter(websocket_urlpatterns))),
        # uvicorn's lifespan events: graceful shutdown of WebSocket clients.
        "lifespan": lifespan,
    }
)

# On SQLite, the write-ahead log is checkpointed by a thread of its own rather
# than inside whichever commit fills it (metrics/checkpoint.py).
checkpoint.enable(settings.DASHBOARD["SQLITE_CHECKPOINT_SECONDS"])

# Every server process runs an alert webhook sender when a URL is set; the
# one holding the lease delivers (alerting/webhook.py).
webhook.start()

# What is loaded by now (Django, the apps and their modules, about 90,000
# objects) lives as long as the process: leave it out of the cyclic garbage
# collector's full passes, which paused the event loop for 30-70 ms with it
# and 5-12 ms without it in the 10,000-metric benchmark (docs/benchmarks.md).
gc.collect()
gc.freeze()
