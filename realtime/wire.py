"""Complete WebSocket text frames written straight to the server's socket.

Why: in the fan-out benchmark (1,000 viewers on one query) each insert sends
1,000 small frames. Under uvicorn a quarter of that round went to the ASGI
`send` call itself (the message dict, websockets' frame object and
serializer, the output list) rather than to the socket write; under daphne
(`runserver`) three quarters did, Twisted adding two epoll registrations and
a reactor turn to every frame. A server-to-client text frame without
extensions is two to ten header bytes and the UTF-8 payload, so when the
connection is plainly open and nothing is waiting to be written we write
those bytes ourselves.

When anything is out of the ordinary (another ASGI server, an extension such
as permessage-deflate negotiated, TLS terminated in the server, data already
buffered or the socket paused by backpressure, a close under way) the writer
declines and the caller uses the ASGI `send`, which queues, waits or raises
as its server does. The internals read here are those of the pinned uvicorn
and daphne (requirements.txt); tests/test_wire.py fails if an upgrade
changes them, rather than letting the fast path quietly switch off.
"""
from __future__ import annotations

import functools
import logging
import struct
import sys
from typing import Any, Callable

from websockets.protocol import State

from .daphne_close import ClosingSend

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

# write(text, *tail): one text frame whose payload is text's UTF-8 followed by
# the `tail` bytes (shared by several frames, encoded once).
Writer = Callable[..., bool]

logger = logging.getLogger(__name__)

# daphne's entry for a connection it has forgotten.
_GONE = {"disconnected": True}


def text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final text frame of `length` bytes."""
    if length < 126:
        return bytes((FIN_TEXT, length))
    if length < 65536:
        return _LENGTH_16.pack(FIN_TEXT, 126, length)
    return _LENGTH_64.pack(FIN_TEXT, 127, length)


def frame_writer(send: Any) -> Writer | None:
    """A function writing one text frame directly, or None when `send` is not
    one of the servers handled here, or the connection negotiated an
    extension. Call it after the handshake. The function returns False (and
    writes nothing) whenever the frame must go through `send` instead."""
    if isinstance(send, ClosingSend):  # under daphne: see realtime/daphne_close.py
        send = send.__wrapped__
    write = _uvicorn_writer(send) or _daphne_writer(send)
    logger.debug("frames of this connection: %s", "written directly" if write else "through the ASGI send")
    return write


def _uvicorn_writer(send: Any) -> Writer | None:
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


def _daphne_writer(send: Any) -> Writer | None:
    # Looked up, never imported: importing daphne.server installs Twisted's
    # reactor, which only a daphne process (runserver) has done.
    server_module = sys.modules.get("daphne.server")
    ws_module = sys.modules.get("daphne.ws_protocol")
    tcp_module = sys.modules.get("twisted.internet.tcp")
    if server_module is None or ws_module is None or tcp_module is None:
        return None
    # daphne's send is functools.partial(server.handle_reply, protocol).
    if not isinstance(send, functools.partial) or send.keywords or len(send.args) != 1:
        return None
    handle_reply = send.func
    if getattr(handle_reply, "__func__", None) is not server_module.Server.handle_reply:
        return None
    protocol = send.args[0]
    if type(protocol) is not ws_module.WebSocketProtocol:
        return None
    transport = protocol.transport
    open_state = protocol.STATE_OPEN
    if protocol.state != open_state or protocol._perMessageCompress is not None:
        return None
    if type(transport) is not tcp_module.Server or transport.TLS:
        return None
    connections = handle_reply.__self__.connections
    sock = transport.socket

    def write(text: str, *tail: bytes) -> bool:
        if (
            protocol.state != open_state
            or not transport.connected
            or transport.disconnecting
            or transport._writeDisconnected
            # Whatever Twisted or autobahn still holds must go first.
            or transport.dataBuffer
            or transport._tempDataBuffer
            or protocol.send_queue
            or "disconnected" in connections.get(protocol, _GONE)
        ):
            return False
        head = text.encode()
        pieces = (text_frame_header(len(head) + sum(map(len, tail))) + head, *tail)
        try:
            sent = sock.sendmsg(pieces) if tail else sock.send(pieces[0])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return False  # the ASGI path lets Twisted see the broken connection
        for piece in pieces:
            # What the socket did not take goes to Twisted, which writes it
            # when the socket is writable; later frames queue behind it.
            if sent >= len(piece):
                sent -= len(piece)
            else:
                transport.write(piece[sent:] if sent else piece)
                sent = 0
        return True

    return write
