"""Origin checking for WebSocket handshakes.

Browsers send an Origin header and must come from one of ALLOWED_HOSTS (so a
page on another site cannot open a socket with a user's cookies or network
position). Clients that are not browsers send no Origin and are let in, as
existing protocol clients (scripts, collectors) do not set one.
"""

from __future__ import annotations

from typing import Any

from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):
    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def allowed_hosts_origin_validator(application: Any) -> BrowserOriginValidator:
    allowed_hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(application, allowed_hosts)
