"""MCP request bodies share the server's body limits: BODY_TIMEOUT and MAX_HELD_BODY_BYTES."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from infero.server import keys
from support.connector import scripted_connector
from support.server import running_server

KB = 1024
ROUTE = "/api/mcp/id/r1"
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def call_body(rid: int, size: int) -> bytes:
    """A `tools/call` of about `size` bytes (one long argument)."""
    params = {"name": "echo", "arguments": {"text": "x" * size}}
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}
    ).encode()


async def test_a_body_that_stops_arriving_gets_408_in_the_brokers_shape_and_the_socket_closes() -> (
    None
):
    async with (
        running_server(body_timeout=0.2) as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1"),
    ):
        port = int(srv.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n".encode()
            + b'{"jsonrpc": "2.0", '
        )
        async with asyncio.timeout(10):
            answer = await reader.read()  # until the server closes the connection
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["data"] == {"mcp": "MCP_TIMEOUT"}


async def test_a_body_beyond_max_held_body_bytes_gets_503_with_retry_after_until_given_back() -> (
    None
):
    async with (
        running_server(max_held_body_bytes=600 * KB) as srv,
        scripted_connector(
            srv.url, path="/api/mcp/connect", kind="mcp", id="r1", max_concurrency=4
        ) as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            held = asyncio.create_task(
                http.post(srv.url + ROUTE, data=call_body(1, 400 * KB), headers=HEADERS)
            )
            first = await relay.next_request()
            assert len(first.body) > 400 * KB
            async with http.post(
                srv.url + ROUTE, data=call_body(2, 400 * KB), headers=HEADERS
            ) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"]["data"] == {"mcp": "MCP_LIMIT_EXCEEDED"}
            await relay.reply(first.id, b'{"jsonrpc":"2.0","id":1,"result":{}}')
            async with await held as resp:
                assert resp.status == 200
            # The first body was given back when its call ended: the same size fits again.
            again = asyncio.create_task(
                http.post(srv.url + ROUTE, data=call_body(3, 400 * KB), headers=HEADERS)
            )
            third = await relay.next_request()
            await relay.reply(third.id, b'{"jsonrpc":"2.0","id":3,"result":{}}')
            async with await again as resp:
                assert resp.status == 200


async def test_a_caller_that_goes_away_gives_its_body_back() -> None:
    async with (
        running_server(max_held_body_bytes=600 * KB) as srv,
        scripted_connector(
            srv.url, path="/api/mcp/connect", kind="mcp", id="r1", max_concurrency=4
        ) as relay,
    ):
        budget = srv.app[keys.BODIES]
        async with asyncio.timeout(10):
            async with aiohttp.ClientSession() as leaving:
                call = asyncio.create_task(
                    leaving.post(srv.url + ROUTE, data=call_body(1, 400 * KB), headers=HEADERS)
                )
                first = await relay.next_request()
                assert budget.held > 400 * KB
                call.cancel()
            await first.cancelled.wait()
        # The call's end is a fleet change (calls in flight): its body goes back with it.
        await srv.wait_for(lambda: budget.held == 0)
