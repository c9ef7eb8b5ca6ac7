"""An asyncio client of the dashboard protocol, on the `websockets` library.

Installable on its own (`pip install ./dashboard_client`): it imports nothing
from Django or the server, so scripts, collectors and other services can use
it as they are. Besides the client it holds the host metrics collector
(`collector`), duration parsing (`durations`) and their command lines (`cli`).

    from dashboard_client import DashboardClient, DashboardError

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
