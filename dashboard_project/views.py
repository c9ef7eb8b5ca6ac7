"""The dashboard page, served with a Content-Security-Policy.

The page keeps a token in sessionStorage, so no script but our own may run
on it: scripts, connections and everything else from this origin only (the
WebSocket on this host), no framing. Styles allow inline values because the
chart library and the widgets set style attributes from script.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.generic import TemplateView


def content_security_policy(request: HttpRequest) -> str:
    host = request.get_host()
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            f"connect-src 'self' ws://{host} wss://{host}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class DashboardView(TemplateView):
    template_name = "dashboard.html"

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = super().get(request, *args, **kwargs)
        response["Content-Security-Policy"] = content_security_policy(request)
        return response
