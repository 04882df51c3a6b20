"""Request bodies: read once, bounded in idle time and in bytes held at once (issue 9)."""

from __future__ import annotations

import asyncio
import io
import json
import tracemalloc

import aiohttp

from support.connector import scripted_connector
from support.server import running_server

CHAT = "/api/v1/chat/completions"
MB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


def big_body(size: int) -> io.BytesIO:
    """A chat request of about `size` bytes (one long message, as with a base64 image)."""
    doc = {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}
    return io.BytesIO(json.dumps(doc).encode())


async def test_bodies_beyond_max_held_body_bytes_get_503_with_retry_after() -> None:
    async with (
        running_server(max_held_body_bytes=3 * MB, max_body_bytes=4 * MB) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        headers = JSON
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(10):
            first = await conn.next_request()
            waiting = asyncio.create_task(
                http.post(srv.url + CHAT, data=big_body(2 * MB), headers=headers)
            )
            await srv.wait_for(lambda: srv.queue_len("m") == 1)
            async with http.post(srv.url + CHAT, data=big_body(2 * MB), headers=headers) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["code"] == "server_overloaded"
            await conn.reply(first.id, b"{}")
            (await busy).release()
            second = await conn.next_request()
            assert len(second.body) > 2 * MB
            await conn.reply(second.id, b"{}")
            (await waiting).release()
            # Everything was given back: the same big body fits again.
            again = asyncio.create_task(
                http.post(srv.url + CHAT, data=big_body(2 * MB), headers=headers)
            )
            third = await conn.next_request()
            await conn.reply(third.id, b"{}")
            async with await again as resp:
                assert resp.status == 200


async def test_a_held_body_costs_its_size_once() -> None:
    """While a big request waits in the queue, the server holds its body once: no second copy
    of the bytes, and not the parsed document either."""
    size = 8 * MB
    async with (
        running_server(max_body_bytes=16 * MB) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
        aiohttp.ClientSession() as http,
    ):
        busy = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
        async with asyncio.timeout(30):
            first = await conn.next_request()
            body = big_body(size)
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                waiting = asyncio.create_task(http.post(srv.url + CHAT, data=body, headers=JSON))
                await srv.wait_for(lambda: srv.queue_len("m") == 1)
                held = tracemalloc.take_snapshot().compare_to(before, "filename")
            finally:
                tracemalloc.stop()
            await conn.reply(first.id, b"{}")
            (await busy).release()
            second = await conn.next_request()
            await conn.reply(second.id, b"{}")
            (await waiting).release()
        grown = sum(stat.size_diff for stat in held if stat.size_diff > 0)
        assert size < grown < 1.5 * size, [str(s) for s in held[:5]]


async def test_a_body_that_stops_arriving_gets_408_and_the_socket_closes() -> None:
    async with running_server(body_timeout=0.2) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"model": '
        )
        async with asyncio.timeout(10):
            answer = await reader.read()  # until the server closes the connection
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'"code": "request_timeout"' in answer or b'"code":"request_timeout"' in answer
