"""WebSocket routes: the protocol's endpoint at /ws/ and at the server root."""

from django.urls import re_path

from .consumer import DashboardConsumer

websocket_urlpatterns = [
    re_path(r"^ws/?$", DashboardConsumer.as_asgi()),
    re_path(r"^$", DashboardConsumer.as_asgi()),
]
