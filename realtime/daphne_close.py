"""Close frames under daphne (`manage.py runserver`) with the code and reason
the application chose, as uvicorn sends them.

Why: daphne 4.2 hands an ASGI `websocket.close` to autobahn's public
`sendClose`, which accepts only 1000 and 3000-4999 (the browser API's rule for
scripts, not the RFC's for servers), and drops the `reason` (daphne issue 374,
autobahn-python issue 1642). So 1003 `binary_not_supported`, 1009
`message_too_large`, 1008 `slow_consumer` and 1001 `server_shutting_down` all
became 1011 with a traceback in the log, and 4001-4003 arrived without their
reasons. No daphne setting or ASGI field changes that.

`closing_send` wraps daphne's send only; a `websocket.close` on an open
connection goes out through autobahn's `sendCloseFrame`, the method its own
`sendClose` ends in, and everything else goes to daphne unchanged. The
internals are those of the pinned daphne (requirements.txt) and the
autobahn it brings: another daphne, or an autobahn whose `sendCloseFrame` has
changed, leaves daphne's path in place and logs why once;
tests/realtime/test_close_codes.py fails if that happens to the pinned versions.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

DAPHNE_VERSION = "4.2.3"
# Codes a server may send (RFC 6455 section 7.4 and the IANA registry), as the
# websockets library behind uvicorn allows them; others stay daphne's to refuse.
SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}) | frozenset(
    range(3000, 5000)
)
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 of them the code

Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Any, Send], Awaitable[None]]

_checked: tuple[Any, Any] | None = None
_declined = False


def with_daphne_closes(app: ASGIApp) -> ASGIApp:
    """The WebSocket application, with daphne's send wrapped by `closing_send`."""

    async def websocket_app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        await app(scope, receive, closing_send(send))

    return websocket_app


def closing_send(send: Send) -> Send:
    """`send` itself, unless it is daphne's and the checked internals are there."""
    if not isinstance(send, functools.partial) or send.keywords or len(send.args) != 1:
        return send
    internals = _internals()
    if internals is None:
        return send
    handle_reply, protocol_class = internals
    protocol = send.args[0]
    if getattr(send.func, "__func__", None) is not handle_reply or type(protocol) is not protocol_class:
        return send
    return ClosingSend(send, protocol)


class ClosingSend:
    """daphne's send, except that a close goes out with its code and reason."""

    def __init__(self, send: Send, protocol: Any) -> None:
        self.__wrapped__ = send
        self.protocol = protocol

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] != "websocket.close" or not self.close(message.get("code"), message.get("reason")):
            await self.__wrapped__(message)

    def close(self, code: int | None, reason: str | None) -> bool:
        """Sends the close frame; False leaves the message to daphne (a refused
        handshake, a connection already closing, a code no server may send)."""
        protocol = self.protocol
        code = 1000 if code is None else code
        if protocol.state != protocol.STATE_OPEN or code not in SENDABLE_CODES:
            return False
        reason_bytes = None
        if reason:
            # Cut at a character boundary, as autobahn's own sendClose does.
            reason_bytes = reason.encode()[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
        protocol.sendCloseFrame(code=code, reasonUtf8=reason_bytes, isReply=False)
        return True


def _internals() -> tuple[Any, Any] | None:
    """(daphne's Server.handle_reply, its WebSocketProtocol) when they are the
    checked ones, else None (logged once)."""
    global _checked, _declined
    if _checked is not None or _declined:
        return _checked
    # daphne's app config imports daphne.server (installing Twisted's reactor)
    # in every process that lists it; only look the modules up here.
    daphne = sys.modules.get("daphne")
    server_module = sys.modules.get("daphne.server")
    ws_module = sys.modules.get("daphne.ws_protocol")
    if daphne is None or server_module is None or ws_module is None:
        return None
    problem = _problem(daphne, ws_module)
    if problem:
        _declined = True
        logger.warning(
            "daphne closes through its own path (%s): under runserver, close codes other than "
            "1000 and 3000-4999 become 1011 and close reasons are dropped",
            problem,
        )
        return None
    _checked = (server_module.Server.handle_reply, ws_module.WebSocketProtocol)
    return _checked


def _problem(daphne: Any, ws_module: Any) -> str:
    version = getattr(daphne, "__version__", None)
    if version != DAPHNE_VERSION:
        return f"daphne {version}, checked with {DAPHNE_VERSION}"
    protocol_class = ws_module.WebSocketProtocol
    send_close_frame = getattr(protocol_class, "sendCloseFrame", None)
    if send_close_frame is None:
        return "no autobahn sendCloseFrame"
    try:
        parameters = list(inspect.signature(send_close_frame).parameters)
    except (TypeError, ValueError):
        return "no autobahn sendCloseFrame"
    if parameters[1:] != ["code", "reasonUtf8", "isReply"] or not hasattr(protocol_class, "STATE_OPEN"):
        return f"autobahn's sendCloseFrame{inspect.signature(send_close_frame)} is not the checked one"
    return ""
