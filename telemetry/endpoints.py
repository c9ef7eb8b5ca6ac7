"""`/metrics`, `/healthz` and `/readyz`, answered by `ProbeMiddleware`.

The middleware sits first in settings.MIDDLEWARE, before SecurityMiddleware,
so these answers are given over plain HTTP with SECURE_SSL_REDIRECT on and
whatever the Host header says: load balancers and Prometheus reach a
process by its IP address, behind the TLS proxy. None of them builds a URL
from the Host, which is what ALLOWED_HOSTS protects; `/metrics` can ask for
a bearer token (DASHBOARD_METRICS_TOKEN). docs/operations.md.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from . import exposition, probes

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up and its event loop answers."""
    return HttpResponse(b"ok\n", content_type="text/plain")


async def readyz(request: HttpRequest) -> HttpResponse:
    """200 when the database (and Redis, if configured) answer; else 503,
    naming what failed."""
    checks = await probes.readiness()
    ready = all(outcome == "ok" for outcome in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return HttpResponse(json.dumps(body) + "\n", content_type="application/json", status=200 if ready else 503)


async def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.DASHBOARD["METRICS_TOKEN"]
    if token and not bearer_token_matches(request.headers.get("Authorization", ""), token):
        response = HttpResponse(b"401 Unauthorized: a valid bearer token is required\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = exposition.render(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)


def bearer_token_matches(header: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


ENDPOINTS: dict[str, Handler] = {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}
PATHS = frozenset(ENDPOINTS)


class ProbeMiddleware:
    """Answers ENDPOINTS before any other middleware runs (no TLS redirect,
    no host check, no session or CSRF work); everything else passes on."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        if iscoroutinefunction(self.get_response):
            markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        handler = ENDPOINTS.get(request.path_info)
        if handler is None:
            return await self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = HttpResponse(b"405 Method Not Allowed\n", status=405)
            response["Allow"] = "GET, HEAD"
            return response
        response = await handler(request)
        response["Cache-Control"] = "no-store"
        return response
