"""An ASGI wrapper that lets Django read at most one byte over the body limit
of an ingest request.

Django's ASGI handler reads a whole request body (spooled to disk past 2.5 MB)
before any view runs, so a view's size check alone would come after a client
had made the server store gigabytes. Past the cap the app is told the body
ended; the view sees Content-Length or the extra byte and answers 413 in its
own order of checks (token first), and the rest of the body is never stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .body import max_body_bytes
from .paths import INGEST_PATHS

Message = Mapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def app_path(scope: dict[str, Any]) -> str:
    # Behind a mount point (uvicorn --root-path), `path` starts with it, as
    # Django sees it before stripping it.
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def capped_ingest_bodies(app: ASGIApp) -> ASGIApp:
    async def capped(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or app_path(scope) not in INGEST_PATHS:
            await app(scope, receive, send)
            return
        limit = max_body_bytes()
        declared = declared_length(scope)
        # A declared length over the limit: the view refuses it from the header.
        allowance = [0 if declared is not None and declared > limit else limit + 1]
        ended = [False]

        async def capped_receive() -> Message:
            if ended[0]:
                # The app believes the body is over; it only waits for the
                # disconnect now. Chunks still arriving are dropped unread.
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return message
            if allowance[0] <= 0:
                ended[0] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")[: allowance[0]]
                allowance[0] -= len(body)
                more = bool(message.get("more_body")) and allowance[0] > 0
                ended[0] = not more
                return {"type": "http.request", "body": body, "more_body": more}
            return message

        await app(scope, capped_receive, send)

    return capped
