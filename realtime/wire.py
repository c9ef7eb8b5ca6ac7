"""Complete WebSocket text frames written straight to uvicorn's socket.

Why: in the fan-out benchmark (1,000 viewers on one query) each insert sends
1,000 small frames, and a quarter of that round went to the ASGI `send` call
itself (the message dict, websockets' frame object and serializer, the output
list) rather than to the socket write: 18.0 ms of server CPU per insert
through `send`, 14.1 ms with direct writes (docs/benchmarks.md). A
server-to-client text frame without extensions is two to ten header bytes and
the UTF-8 payload, so when the connection is plainly open and nothing is
waiting to be written we write those bytes ourselves.

This is the one place that reads uvicorn's internals, fenced: only the
pinned uvicorn (UVICORN_PIN, checked when this module loads) and its
websockets-sansio protocol are handled; any other version or implementation
gets the ASGI `send` and one WARNING says so. When anything is out of the
ordinary (an extension such as permessage-deflate negotiated, data already
buffered or the socket paused by backpressure, a close under way) the writer
declines and the caller uses the ASGI `send`, which queues, waits or raises as
the server does. tests/realtime/test_wire.py fails if an upgrade changes what is read.
Under `runserver` (daphne, for development) every frame goes through `send`:
45.9 ms of CPU per insert at 1,000 viewers against 13.0 ms with the direct
write we no longer keep there (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from websockets.protocol import State

logger = logging.getLogger(__name__)

# The uvicorn release whose internals the direct write was written against
# (requirements.txt pins it).
UVICORN_PIN = "0.54.0"

try:
    import uvicorn
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SansIO
except ImportError:  # uvicorn is only needed to serve in production
    uvicorn = None  # type: ignore[assignment]
    _SansIO = None  # type: ignore[assignment,misc]

FIN_TEXT = 0x81
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")
# Above this, header and payload go to the transport separately instead of
# being joined (a 1.8 MB result is not copied once more per viewer).
JOIN_LIMIT = 64 * 1024

# write(text, *tail): one text frame whose payload is text's UTF-8 followed by
# the `tail` bytes (shared by several frames, encoded once).
Writer = Callable[..., bool]

_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def pinned_uvicorn() -> bool:
    """Whether the running uvicorn is the one the direct write knows."""
    return uvicorn is not None and getattr(uvicorn, "__version__", None) == UVICORN_PIN


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame of `length` bytes."""
    if length < 126:
        return bytes((FIN_TEXT, length))
    if length < 65536:
        return _LENGTH_16.pack(FIN_TEXT, 126, length)
    return _LENGTH_64.pack(FIN_TEXT, 127, length)


def frame_writer(send: Any) -> Writer | None:
    """A function writing one text frame directly, or None when `send` is not
    the pinned uvicorn's websockets-sansio protocol, or the connection
    negotiated an extension. Call it after the handshake. The function returns
    False (and writes nothing) whenever the frame must go through `send`."""
    write = _uvicorn_writer(send)
    logger.debug("frames of this connection: %s", "written directly" if write else "through the ASGI send")
    return write


def _uvicorn_writer(send: Any) -> Writer | None:
    protocol = getattr(send, "__self__", None)
    if not type(protocol).__module__.startswith("uvicorn."):
        return None  # another server (daphne under runserver, a test)
    if not pinned_uvicorn():
        _warn_once(
            "version",
            "uvicorn %s is not the pinned %s: pushes go through the ASGI send (slower at many viewers)",
            getattr(uvicorn, "__version__", "?"),
            UVICORN_PIN,
        )
        return None
    if _SansIO is None or type(protocol) is not _SansIO or getattr(send, "__func__", None) is not _SansIO.send:
        _warn_once(
            "protocol",
            "uvicorn's %s WebSocket implementation is not websockets-sansio: pushes go "
            "through the ASGI send (slower at many viewers; run uvicorn with --ws websockets-sansio)",
            type(protocol).__name__,
        )
        return None
    if not protocol.handshake_complete or protocol.conn.extensions:
        return None  # permessage-deflate: the server must compress
    connection = protocol.conn
    transport = protocol.transport
    writable = protocol.writable
    open_state = State.OPEN

    def write(text: str, *tail: bytes) -> bool:
        if (
            protocol.close_sent
            or protocol.disconnected
            or not writable.is_set()
            or connection.state is not open_state
            or transport.is_closing()
        ):
            return False
        head = text.encode()
        length = len(head) + sum(map(len, tail))
        if length < JOIN_LIMIT:
            transport.write(b"".join((text_frame_header(length), head, *tail)))
        else:
            transport.writelines((text_frame_header(length) + head, *tail))
        return True

    return write
