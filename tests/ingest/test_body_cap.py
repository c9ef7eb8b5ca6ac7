"""A live server stops reading an ingest body at the limit (1 MiB by default)
and answers in the view's order of checks, instead of storing the whole body
first as Django's ASGI handler would: a client that declares or streams a
gigabyte gets its answer after sending a little more than the limit."""

from __future__ import annotations

import asyncio
import json

import pytest

from ingest.body_cap import app_path

TIMEOUT = 5.0
CHUNK = b"x" * 65536


async def request_head(server, path: str, headers: dict[str, str]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    writer.write("\r\n".join(lines).encode())
    return reader, writer


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status = int(head.split(b" ", 2)[1])
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
    return status, json.loads(body)


async def send_quietly(writer: asyncio.StreamWriter, data: bytes) -> None:
    # The server may answer and close while the client is still sending.
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass


@pytest.mark.parametrize("path", ["/api/metrics", "/api/v2/write"])
async def test_a_declared_gigabyte_is_refused_after_a_few_chunks(server, path):
    content_type = "application/json" if path == "/api/metrics" else "text/plain"
    headers = {"Authorization": "Bearer admin-token", "Content-Type": content_type, "Content-Length": str(2**30)}
    reader, writer = await request_head(server, path, headers)
    for _ in range(4):
        await send_quietly(writer, CHUNK)
    assert await answer(reader) == (
        413,
        {"code": "VALIDATION_ERROR", "message": "Request body too large: at most 1048576 bytes"},
    )
    writer.close()


async def test_a_streamed_body_is_cut_at_the_limit(server):
    headers = {
        "Authorization": "Bearer admin-token",
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
    }
    reader, writer = await request_head(server, "/api/metrics", headers)
    # 1 MiB and one chunk more, never the final chunk: only the cap ends the body.
    for _ in range(17):
        await send_quietly(writer, b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
    assert await answer(reader) == (
        413,
        {"code": "VALIDATION_ERROR", "message": "Request body too large: at most 1048576 bytes"},
    )
    writer.close()


async def test_the_token_is_still_checked_first(server):
    headers = {"Content-Type": "application/json", "Content-Length": str(2**30)}
    reader, writer = await request_head(server, "/api/metrics", headers)
    assert await answer(reader) == (401, {"code": "UNAUTHORIZED", "message": "Authentication required"})
    writer.close()


def test_the_cap_finds_the_paths_behind_a_mount_point():
    assert app_path({"path": "/dash/api/metrics", "root_path": "/dash"}) == "/api/metrics"
    assert app_path({"path": "/v1/metrics", "root_path": ""}) == "/v1/metrics"
    assert app_path({"path": "/v1/metrics"}) == "/v1/metrics"
