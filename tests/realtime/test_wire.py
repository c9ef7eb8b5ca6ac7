"""Frames written straight to uvicorn's transport (realtime/wire.py): byte
for byte what the WebSocket parser expects, used only when the connection is
plain, open and writable, and the ASGI path otherwise."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket

import pytest
import uvicorn
from channels.db import database_sync_to_async
from django.db import connections
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from dashboard_project.asgi import application
from realtime import hub as hubs
from realtime import wire
from realtime.outbox import Outbox
from tests.conftest import metric
from tests.servers import LiveServer, open_client, push_frame

pytestmark = pytest.mark.django_db(transaction=True)


def parse_server_frame(data: bytes) -> Frame:
    """Parses one unmasked frame with the websockets library's own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("frame incomplete")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70_000, 2_000_000])
def test_header_and_payload_parse_as_one_final_text_frame(length):
    payload = b"x" * length
    frame = parse_server_frame(wire.text_frame_header(length) + payload)
    assert (frame.opcode, frame.fin, frame.rsv1, frame.rsv2, frame.rsv3) == (Opcode.TEXT, True, False, False, False)
    assert frame.data == payload


def test_no_writer_for_a_send_that_is_not_uvicorns():
    async def send(message):
        pass

    assert wire.frame_writer(send) is None
    assert wire.frame_writer(Outbox(send, 1000, lambda: None).reply) is None


class InProcessServer:
    """uvicorn serving the application on this test's event loop, so the test
    can reach the server side of each connection."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            application, host="127.0.0.1", port=self.port, ws="websockets-sansio", lifespan="off", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    async def __aenter__(self) -> InProcessServer:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:  # noqa: ASYNC110  (uvicorn offers no event for it)
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)
        await hubs.stop_all()
        await database_sync_to_async(connections.close_all)()


def server_side_outboxes() -> list[Outbox]:
    """The outboxes of the viewers' connections, server side."""
    (hub,) = hubs.running_hubs()
    return [c.outbox for c in hub.connections if c.session is not None and "viewer" in c.session.roles]


def server_side_outbox() -> Outbox:
    (outbox,) = server_side_outboxes()
    return outbox


async def every_header_size(url: str, after_login=None) -> None:
    """Pushes and replies of about 60 B, 200 B, 40 KB and 90 KB (the 7-bit,
    16-bit and 64-bit length headers) arrive whole and as the rules say."""
    admin = await open_client(url, "admin", "admin-token", compression=None)
    viewer = await open_client(url, "viewer", "viewer-token", compression=None)
    if after_login is not None:
        after_login()

    subscription_id, initial = await viewer.subscribe("all-metrics")
    assert initial == []

    written: list[dict] = []
    for count, unit_length in ((1, 1), (1, 100), (160, 200), (200, 400)):
        rows = [metric(name=f"m{len(written) + i}", unit="u" * unit_length) for i in range(count)]
        result = await admin.ok(
            "store.transaction", operations=[{"op": "insert", "bucket": "metrics", "data": row} for row in rows]
        )
        written.extend(r["data"] for r in result["results"])
        push = await viewer.push()
        assert push == push_frame(subscription_id, sorted_like(push["data"], written))
    assert len(json.dumps(push)) > 65536

    assert await viewer.ok("store.all", bucket="metrics") == sorted_like(push["data"], written)
    await admin.close()
    await viewer.close()


async def test_uvicorn_pushes_and_replies_of_every_header_size_arrive_whole():
    def direct_path_is_on() -> None:
        assert server_side_outbox().writer is not None

    async with InProcessServer() as server:
        await every_header_size(server.url, direct_path_is_on)


def sorted_like(received: list[dict], written: list[dict]) -> list[dict]:
    """`written` in the order the server listed it, after checking that both
    hold the same records."""
    by_id = {record["id"]: record for record in written}
    assert sorted(by_id) == sorted(record["id"] for record in received)
    return [by_id[record["id"]] for record in received]


async def test_compressed_connections_go_through_asgi_send():
    async with InProcessServer() as server:
        viewer = await open_client(server.url, "viewer", "viewer-token")  # offers permessage-deflate
        outbox = server_side_outbox()
        assert outbox.writer is None
        assert await viewer.ok("store.count", bucket="metrics") == 0
        await viewer.close()


async def test_paused_or_closing_connections_decline_and_asgi_send_waits():
    async with InProcessServer() as server:
        admin = await open_client(server.url, "admin", "admin-token", compression=None)
        viewer = await open_client(server.url, "viewer", "viewer-token", compression=None)
        outbox = server_side_outbox()
        protocol = outbox.asgi_send.__self__  # uvicorn's protocol, to pause it
        subscription_id, _ = await viewer.subscribe("metric-count")

        # The transport says its buffer is full: the writer declines, the
        # frame waits in uvicorn's send until the buffer drains.
        protocol.pause_writing()
        assert outbox.writer("{}") is False
        await admin.ok("store.insert", bucket="metrics", data=metric())
        assert await viewer.silent(0.3)
        assert len(outbox) == 0 and outbox.waiting_on_send  # held by the ASGI send, not dropped
        protocol.resume_writing()
        assert await viewer.push(5) == push_frame(subscription_id, 1)

        # Once the client has closed, nothing is written directly any more.
        await viewer.close()
        for _ in range(100):
            if protocol.disconnected:
                break
            await asyncio.sleep(0.01)
        assert outbox.writer("{}") is False
        await admin.close()


# --- runserver (daphne) ----------------------------------------------------------------


@pytest.fixture
def runserver(tmp_path):
    server = LiveServer(tmp_path, runserver=True, DJANGO_LOG_LEVEL="DEBUG")
    server.prepare()
    server.start()
    yield server
    server.stop()


@pytest.mark.multiprocess
async def test_runserver_sends_frames_of_every_header_size_through_asgi(runserver):
    """runserver (daphne) is for development: no direct write there."""
    await every_header_size(runserver.url)
    log = runserver.log()
    assert log.count("frames of this connection: through the ASGI send") == 2, log[-3000:]
    assert "written directly" not in log


async def test_another_uvicorn_than_the_pinned_one_gets_the_asgi_send_and_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(wire, "UVICORN_PIN", "0.0.0")
    monkeypatch.setattr(wire, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="realtime.wire"):
        async with InProcessServer() as server:
            viewers = [await open_client(server.url, f"viewer{i}", "viewer-token", compression=None) for i in range(2)]
            for outbox in server_side_outboxes():
                assert outbox.writer is None
            assert await viewers[0].ok("store.count", bucket="metrics") == 0
            for viewer in viewers:
                await viewer.close()
    assert [r.getMessage() for r in caplog.records if r.name == "realtime.wire"] == [
        f"uvicorn {uvicorn.__version__} is not the pinned 0.0.0: pushes go through the ASGI send "
        "(slower at many viewers)"
    ]


def test_the_pinned_uvicorn_is_the_installed_one():
    """Fails when requirements.txt moves uvicorn on without the direct write
    being checked against the new release (then update UVICORN_PIN)."""
    assert uvicorn.__version__ == wire.UVICORN_PIN and wire.pinned_uvicorn()


@pytest.mark.multiprocess
async def test_runserver_keeps_frames_whole_and_in_order_for_a_reader_that_stalls(runserver):
    """Frames that do not fit the socket go to Twisted's buffer, and later
    frames queue behind them instead of overtaking them."""
    admin = await open_client(runserver.url, "admin", "admin-token", compression=None)
    # max_queue=1: the client stops reading the socket while a message waits.
    viewer = await open_client(runserver.url, "viewer", "viewer-token", compression=None, max_queue=1)
    _, initial = await viewer.subscribe("all-metrics")
    assert initial == []
    base = [metric(name=f"base{i}", unit="u" * 900) for i in range(150)]  # a result of about 150 KB
    await admin.ok("store.transaction", operations=[{"op": "insert", "bucket": "metrics", "data": row} for row in base])
    for i in range(60):  # about 9 MB of pushes while the viewer does not read
        await admin.ok("store.insert", bucket="metrics", data=metric(name=f"more{i}"))
    sizes = []
    while not sizes or sizes[-1] < 210:
        push = await viewer.push(10)
        sizes.append(len(push["data"]))
    # Latest state: pushes may skip intermediate results (coalesced while the
    # reader stalled) but never go backwards or repeat, and the last one holds
    # every insert.
    assert sizes[0] >= 150 and sizes[-1] == 210
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert push["data"] == await admin.ok("store.all", bucket="metrics")
    await admin.close()
    await viewer.close()
