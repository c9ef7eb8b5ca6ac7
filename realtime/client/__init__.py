"""An asyncio client of the dashboard protocol, on the `websockets` library.

Plain Python: it imports nothing from Django, so scripts, collectors and
other services can use it as they are.

    from realtime.client import DashboardClient, DashboardError

    async with DashboardClient("ws://127.0.0.1:8000/ws/", "admin-token") as c:
        await c.insert("metrics", {"name": "cpu", "value": 12.5, "unit": "%", "timestamp": ms})
        sub = await c.subscribe("metrics-by-name", {"name": "cpu"}, on_result)
"""
from .backoff import Backoff
from .connection import DashboardClient
from .errors import ConnectionLost, DashboardError, RequestTimeout, SessionRevoked
from .subscriptions import Subscription

__all__ = [
    "Backoff",
    "ConnectionLost",
    "DashboardClient",
    "DashboardError",
    "RequestTimeout",
    "SessionRevoked",
    "Subscription",
]
