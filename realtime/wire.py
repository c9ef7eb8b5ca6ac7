"""Complete WebSocket text frames written straight to uvicorn's transport.

Why: in the fan-out benchmark (1,000 viewers on one query) each insert sends
1,000 small frames, and a quarter of that round went to the ASGI `send` call
itself (the message dict, websockets' frame object and serializer, the
output list) rather than to the socket write. A server-to-client text frame
without extensions is two to ten header bytes and the UTF-8 payload, so when
the connection is plainly open and writable we write those bytes ourselves.

When anything is out of the ordinary (another ASGI server, an extension such
as permessage-deflate negotiated, the socket paused by backpressure, a close
under way) the writer declines and the caller uses the ASGI `send`, which
waits or raises as the spec says. The protocol internals read here are those
of the pinned uvicorn (requirements.txt); tests/test_wire.py fails if an
upgrade changes them, rather than letting the fast path quietly switch off.
"""
from __future__ import annotations

import struct
from typing import Any, Callable

from websockets.protocol import State

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # uvicorn is only needed to serve in production
    WebSocketsSansIOProtocol = None

FIN_TEXT = 0x81
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")
# Above this, header and payload go to the transport separately instead of
# being joined (a 1.8 MB result is not copied once more per viewer).
JOIN_LIMIT = 64 * 1024

Writer = Callable[[str], bool]


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame of `length` bytes."""
    if length < 126:
        return bytes((FIN_TEXT, length))
    if length < 65536:
        return _LENGTH_16.pack(FIN_TEXT, 126, length)
    return _LENGTH_64.pack(FIN_TEXT, 127, length)


def frame_writer(send: Any) -> Writer | None:
    """A function writing one text frame directly, or None when `send` is not
    uvicorn's websockets-sansio protocol with no extensions negotiated. Call
    it after the handshake. It returns False (and writes nothing) whenever
    the frame must go through `send` instead."""
    if WebSocketsSansIOProtocol is None:
        return None
    protocol = getattr(send, "__self__", None)
    if type(protocol) is not WebSocketsSansIOProtocol or getattr(send, "__func__", None) is not WebSocketsSansIOProtocol.send:
        return None
    if not protocol.handshake_complete or protocol.conn.extensions:
        return None
    connection = protocol.conn
    transport = protocol.transport
    writable = protocol.writable
    open_state = State.OPEN

    def write(text: str) -> bool:
        if (
            protocol.close_sent
            or protocol.disconnected
            or not writable.is_set()
            or connection.state is not open_state
            or transport.is_closing()
        ):
            return False
        payload = text.encode()
        length = len(payload)
        if length < 126:
            transport.write(bytes((FIN_TEXT, length)) + payload)
        elif length < JOIN_LIMIT:
            transport.write(_LENGTH_16.pack(FIN_TEXT, 126, length) + payload)
        else:
            transport.writelines((text_frame_header(length), payload))
        return True

    return write
