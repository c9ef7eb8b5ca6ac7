"""ASGI entry point: HTTP goes to Django, WebSockets to the dashboard consumer."""
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard_project.settings")
# Django must be set up before the consumer (and its models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from realtime.origins import allowed_hosts_origin_validator  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from realtime.shutdown import lifespan  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": allowed_hosts_origin_validator(URLRouter(websocket_urlpatterns)),
        # uvicorn's lifespan events: graceful shutdown of WebSocket clients.
        "lifespan": lifespan,
    }
)
