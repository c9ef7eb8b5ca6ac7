"""The outbox drives any awaitable the ASGI `send` returns, in order, and says
so when a send fails for another reason than a client that went away."""

from __future__ import annotations

import asyncio
import logging

from realtime.outbox import Outbox


async def test_a_send_that_returns_futures_gets_every_frame_in_order():
    loop = asyncio.get_running_loop()
    sent: list[str] = []
    pending: list[asyncio.Future] = []

    def send(message: dict) -> asyncio.Future:
        sent.append(message["text"])
        future = loop.create_future()
        pending.append(future)
        return future

    outbox = Outbox(send, max_bytes=10_000, on_overflow=lambda: None)
    outbox.reply("a")
    outbox.reply("b")
    outbox.push("sub-1", "p1:", ("x", "}"), (b"x", b"}"))
    outbox.push("sub-1", "p1:", ("y", "}"), (b"y", b"}"))  # replaces the queued push
    outbox.reply("c")
    while pending:
        future = pending.pop(0)
        future.set_result(None)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert await outbox.flushed(timeout=1)
    assert sent == ["a", "b", "p1:y}", "c"]
    assert outbox.queued == 0


async def test_an_async_def_send_that_suspends_gets_every_frame():
    sent: list[str] = []
    gate = asyncio.Event()

    async def send(message: dict) -> None:
        await gate.wait()
        sent.append(message["text"])

    outbox = Outbox(send, max_bytes=10_000, on_overflow=lambda: None)
    for text in ("1", "2", "3"):
        outbox.reply(text)
    assert sent == [] and outbox.queued == 2
    gate.set()
    assert await outbox.flushed(timeout=1)
    assert sent == ["1", "2", "3"]


async def test_an_unexpected_send_failure_is_logged_and_closes_the_outbox(caplog):
    async def send(message: dict) -> None:
        raise RuntimeError("the server refused the message")

    outbox = Outbox(send, max_bytes=10_000, on_overflow=lambda: None)
    with caplog.at_level(logging.WARNING, logger="realtime.outbox"):
        outbox.reply("a")
    assert outbox.closed
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "sending a frame failed; closing the connection's outbox")
    ]


async def test_a_client_that_went_away_is_not_a_warning(caplog):
    async def send(message: dict) -> None:
        raise ConnectionResetError("gone")

    outbox = Outbox(send, max_bytes=10_000, on_overflow=lambda: None)
    with caplog.at_level(logging.WARNING, logger="realtime.outbox"):
        outbox.reply("a")
    assert outbox.closed and caplog.records == []
