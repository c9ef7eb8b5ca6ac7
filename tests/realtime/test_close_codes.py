"""Close codes and reasons on the wire, from real server processes: uvicorn
(production, ./dev run) and daphne (`manage.py runserver`) close a binary
frame with 1003 `binary_not_supported`, a frame over the size limit with 1009
`message_too_large`, and an application code with its reason, the same way
(realtime/daphne_close.py makes daphne do it)."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from pathlib import Path

import daphne
import pytest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime import daphne_close, wire
from tests.servers import LiveServer, open_client

pytest_plugins = ["tests.servers"]  # a failing test shows the servers' logs

MAX_FRAME_BYTES = 1024 * 1024  # the default DASHBOARD_MAX_FRAME_BYTES
TIMEOUT = 5.0
SERVERS = {"uvicorn": False, "runserver": True}


def started(workdir: Path, kind: str, **extra_env: str) -> LiveServer:
    process = LiveServer(workdir, runserver=SERVERS[kind], **extra_env)
    process.prepare()
    process.start()
    return process


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request, tmp_path_factory) -> LiveServer:
    process = started(tmp_path_factory.mktemp(request.param), request.param)
    yield process
    process.stop()


async def close_received(ws) -> tuple[int, str]:
    """The code and reason of the server's close frame (after any frames before it)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed as closed:
        if closed.rcvd is None:
            raise AssertionError(f"no close frame from the server: {closed!r}") from None
        return closed.rcvd.code, closed.rcvd.reason


async def assert_still_serving(server: LiveServer) -> None:
    client = await open_client(server.url, "after", "viewer-token")
    assert await client.ok("auth.whoami") == {
        "authenticated": True,
        "userId": "viewer-1",
        "roles": ["viewer"],
        "expiresAt": None,
    }
    await client.close()
    assert "Exception inside application" not in server.log(), server.log()[-3000:]


def whoami_of_bytes(size: int, pad: str = "x") -> str:
    """A valid request whose UTF-8 is exactly `size` bytes (`pad` of 1 or 2 bytes)."""
    head, tail = '{"id":1,"type":"auth.whoami","pad":"', '"}'
    room = size - len(head) - len(tail)
    text = head + pad * (room // len(pad.encode())) + "x" * (room % len(pad.encode())) + tail
    assert len(text.encode()) == size
    return text


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "payload", [b"\x00\x01", b"", b'{"id":1,"type":"auth.whoami"}'], ids=["bytes", "empty", "json"]
)
async def test_a_binary_frame_closes_with_1003(server, payload):
    client = await open_client(server.url, "binary", "viewer-token")
    await client.ws.send(payload)
    assert await close_received(client.ws) == (1003, "binary_not_supported")
    await assert_still_serving(server)


@pytest.mark.multiprocess
@pytest.mark.parametrize("pad", ["x", "\u00e9"], ids=["ascii", "two-byte"])
async def test_a_frame_over_the_limit_closes_with_1009_and_one_at_the_limit_is_answered(server, pad):
    client = await open_client(server.url, "big", "viewer-token")
    await client.ws.send(whoami_of_bytes(MAX_FRAME_BYTES, pad))
    assert (await client.receive())["data"]["authenticated"] is True
    await client.ws.send(whoami_of_bytes(MAX_FRAME_BYTES + 1, pad))
    assert await close_received(client.ws) == (1009, "message_too_large")
    await assert_still_serving(server)


@pytest.mark.multiprocess
async def test_a_frame_over_the_limit_closes_an_unauthenticated_connection_too(server):
    async with connect(server.url, max_size=None, compression=None, open_timeout=TIMEOUT) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send("[" * (MAX_FRAME_BYTES + 1))
        assert await close_received(ws) == (1009, "message_too_large")


@pytest.mark.multiprocess
async def test_a_refused_handshake_is_still_the_servers_own(server):
    """A close before the handshake completes (the Origin check) stays an HTTP 403."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(server.url, origin="http://elsewhere.example", open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 403
    await assert_still_serving(server)


@pytest.mark.multiprocess
@pytest.mark.parametrize("kind", list(SERVERS))
async def test_an_application_close_code_keeps_its_reason(tmp_path, kind):
    """daphne used to drop every reason, here 4003's `too_many_connections`."""
    process = started(tmp_path, kind, DASHBOARD_MAX_CONNECTIONS_PER_ADDRESS="1")
    try:
        first = await open_client(process.url, "first")
        async with connect(process.url, open_timeout=TIMEOUT) as second:
            assert await close_received(second) == (4003, "too_many_connections")
        await first.close()
    finally:
        process.stop()


# --- the fence around daphne's internals (in this process) -----------------------------


def test_the_checked_daphne_is_the_pinned_one():
    requirements = (Path(__file__).resolve().parents[2] / "requirements.txt").read_text()
    assert re.search(r"^daphne==(\S+)$", requirements, re.M).group(1) == daphne_close.DAPHNE_VERSION
    assert daphne.__version__ == daphne_close.DAPHNE_VERSION
    # daphne's app config has imported daphne.server here too: the internals pass the checks.
    assert daphne_close._internals() == (Server.handle_reply, WebSocketProtocol)


class ClosedFrames:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def __call__(self, code=None, reasonUtf8=None, isReply=False) -> None:
        self.sent.append((code, reasonUtf8, isReply))


def daphne_send() -> tuple[functools.partial, WebSocketProtocol]:
    """daphne's send for one open connection, as daphne makes it
    (partial(server.handle_reply, protocol)), without a server or a socket."""
    server = Server.__new__(Server)
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.state = WebSocketProtocol.STATE_OPEN
    return functools.partial(Server.handle_reply.__get__(server), protocol), protocol


def test_daphnes_send_is_wrapped_and_its_frames_go_through_it():
    send, protocol = daphne_send()
    wrapped = daphne_close.closing_send(send)
    assert isinstance(wrapped, daphne_close.ClosingSend)
    assert (wrapped.__wrapped__, wrapped.protocol) == (send, protocol)
    # Only uvicorn's sends are written to directly (realtime/wire.py).
    assert wire.frame_writer(wrapped) is None and wire.frame_writer(send) is None


async def test_closes_go_out_with_code_and_reason_and_the_rest_goes_to_daphne():
    messages: list = []

    async def to_daphne(message):
        messages.append(message)

    _, protocol = daphne_send()
    protocol.sendCloseFrame = frames = ClosedFrames()
    wrapped = daphne_close.ClosingSend(to_daphne, protocol)
    await wrapped({"type": "websocket.close", "code": 1009, "reason": "message_too_large"})
    await wrapped({"type": "websocket.close"})
    await wrapped({"type": "websocket.close", "code": 4003, "reason": "\u00e9" * 100})
    await wrapped({"type": "websocket.close", "code": 1005})  # no server may send it: daphne decides
    await wrapped({"type": "websocket.send", "text": "{}"})
    protocol.state = WebSocketProtocol.STATE_CONNECTING  # a refused handshake is daphne's 403
    await wrapped({"type": "websocket.close", "code": 1003})
    assert frames.sent == [
        (1009, b"message_too_large", False),
        (1000, None, False),
        (4003, ("\u00e9" * 61).encode(), False),
    ]
    assert messages == [
        {"type": "websocket.close", "code": 1005},
        {"type": "websocket.send", "text": "{}"},
        {"type": "websocket.close", "code": 1003},
    ]


@pytest.mark.parametrize("send", [print, functools.partial(print, 1), functools.partial(print, 1, 2)])
def test_other_servers_sends_are_left_alone(send):
    assert daphne_close.closing_send(send) is send


def test_another_daphne_falls_back_to_its_own_path_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(daphne_close, "_checked", None)
    monkeypatch.setattr(daphne_close, "_declined", False)
    monkeypatch.setattr(daphne, "__version__", "9.0.0")
    send, _ = daphne_send()
    with caplog.at_level(logging.WARNING, logger="realtime.daphne_close"):
        assert daphne_close.closing_send(send) is send
        assert daphne_close.closing_send(send) is send
    assert [r.getMessage() for r in caplog.records] == [
        "daphne closes through its own path (daphne 9.0.0, checked with 4.2.3): under runserver, close codes "
        "other than 1000 and 3000-4999 become 1011 and close reasons are dropped"
    ]


def test_a_changed_send_close_frame_falls_back(monkeypatch):
    monkeypatch.setattr(daphne_close, "_checked", None)
    monkeypatch.setattr(daphne_close, "_declined", False)
    monkeypatch.setattr(WebSocketProtocol, "sendCloseFrame", lambda self, code, reason: None)
    send, _ = daphne_send()
    assert daphne_close.closing_send(send) is send
