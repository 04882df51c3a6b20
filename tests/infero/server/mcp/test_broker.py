"""The MCP broker relays a client's call over the relay's link."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from support.connector import scripted_connector
from support.server import running_server


async def test_a_call_reaches_the_relay_with_the_clients_request_id() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(
                    srv.url + "/api/mcp/id/r1",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"X-Request-Id": "trace-42", "Accept": "application/json"},
                )
            )
            incoming = await relay.next_request()
            assert incoming.frame.request_id == "trace-42"
            await relay.reply(incoming.id, b'{"jsonrpc":"2.0","id":1,"result":{}}')
            resp = await call
            assert resp.status == 200
            resp.release()


async def test_a_relay_gone_before_answering_is_a_503_with_retry_after() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(
                    srv.url + "/api/mcp/id/r1",
                    json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                    headers={"Accept": "application/json"},
                )
            )
            await relay.next_request()
            await relay.ws.close()
            resp = await call
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "5"
        body = await resp.json()
        assert body["error"]["data"] == {"mcp": "MCP_PROVIDER_UNAVAILABLE"}
        assert body["id"] == 7


async def test_server_shutdown_closes_every_relay_link_as_going_away() -> None:
    async with contextlib.AsyncExitStack() as relays:
        server = running_server()
        srv = await server.__aenter__()
        try:
            connected = [
                await relays.enter_async_context(
                    scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id=rid)
                )
                for rid in ("r1", "r2")
            ]
        finally:
            await server.__aexit__(None, None, None)
        async with asyncio.timeout(5):
            for relay in connected:
                await relay.closed.wait()
        assert [relay.ws.close_code for relay in connected] == [1001, 1001]


async def test_a_providers_cors_headers_never_leak_when_no_origin_is_allowed() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(
                http.post(
                    srv.url + "/api/mcp/id/r1",
                    json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    headers={"Accept": "application/json", "Origin": "https://evil.example"},
                )
            )
            incoming = await relay.next_request()
            await relay.head(
                incoming.id,
                200,
                [
                    ("Content-Type", "application/json"),
                    ("Access-Control-Allow-Origin", "*"),
                    ("access-control-allow-credentials", "true"),
                    ("X-Provider", "kept"),
                ],
            )
            await relay.body(incoming.id, b'{"jsonrpc":"2.0","id":1,"result":{}}')
            await relay.end(incoming.id)
            async with await call as resp:
                assert resp.status == 200
                assert resp.headers["X-Provider"] == "kept"
                assert not [k for k in resp.headers if k.lower().startswith("access-control-")]
