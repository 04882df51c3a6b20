"""The MCP broker relays a client's call over the relay's link."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from infero.protocol.link import LinkError
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


async def test_a_502_from_a_failed_provider_call_carries_retry_after_and_says_why() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            for code, says in (
                ("backend_unreachable", "cannot be reached"),
                ("backend_error", "answer broke off"),
            ):
                call = asyncio.create_task(
                    http.post(
                        srv.url + "/api/mcp/id/r1",
                        json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                        headers={"Accept": "application/json"},
                    )
                )
                incoming = await relay.next_request()
                await relay.end(incoming.id, error=LinkError(code=code, message="x"))
                resp = await call
                assert resp.status == 502
                assert resp.headers["Retry-After"] == "5"
                body = await resp.json()
                assert body["error"]["data"] == {"mcp": "MCP_UPSTREAM_ERROR"}
                assert says in body["error"]["message"]


async def test_a_call_failed_upstream_is_the_relays_last_error_in_the_state() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            async with http.get(srv.url + "/api/state") as resp:
                (before,) = (await resp.json())["mcp"]["clients"]
            assert before.get("last_error", "") == ""
            call = asyncio.create_task(
                http.post(
                    srv.url + "/api/mcp/id/r1",
                    json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
                    headers={"Accept": "application/json"},
                )
            )
            incoming = await relay.next_request()
            error = LinkError(code="backend_unreachable", message="x")
            await relay.end(incoming.id, error=error)
            assert (await call).status == 502
            async with http.get(srv.url + "/api/state") as resp:
                (after,) = (await resp.json())["mcp"]["clients"]
        assert after["last_error"] == "MCP_UPSTREAM_ERROR: the MCP provider cannot be reached"
        assert after["last_error_at"]


@pytest.mark.parametrize(
    "cut",
    [
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","par',
        b"event: message\ndata: {}\n",
        b"event: mess",
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message"}\n\n',
    ],
)
async def test_an_sse_answer_cut_mid_event_ends_with_a_clean_upstream_error_for_the_sdk(
    cut: bytes,
) -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
    ):

        async def provider() -> None:
            while True:
                incoming = await relay.next_request()
                if incoming.frame.model == "initialize":
                    result = {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "cut", "version": "1"},
                    }
                    answer = {"jsonrpc": "2.0", "id": json.loads(incoming.body)["id"]}
                    headers = [("Content-Type", "application/json"), ("Mcp-Session-Id", "s1")]
                    await relay.head(incoming.id, 200, headers)
                    await relay.body(incoming.id, json.dumps({**answer, "result": result}).encode())
                    await relay.end(incoming.id)
                elif incoming.frame.model == "tools/list":
                    await relay.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
                    await relay.body(incoming.id, cut)
                    error = LinkError(code="backend_error", message="cut")
                    await relay.end(incoming.id, error=error)
                else:
                    await relay.reply(incoming.id, b"", status=202)

        scripted = asyncio.create_task(provider())
        try:
            async with (
                asyncio.timeout(10),
                httpx2.AsyncClient() as http,
                Client(
                    streamable_http_client(srv.url + "/api/mcp/id/r1", http_client=http),
                    mode="legacy",
                ) as client,
            ):
                with pytest.raises(MCPError) as failed:
                    await client.list_tools()
        finally:
            scripted.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scripted
        assert failed.value.error.data == {"mcp": "MCP_UPSTREAM_ERROR"}


async def test_a_401_challenges_with_bearer_and_points_at_the_resource_metadata() -> None:
    async with (
        running_server(api_key="k1") as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1"),
        aiohttp.ClientSession() as http,
    ):
        async with http.post(srv.url + "/api/mcp/id/r1", json={}) as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
            body = await resp.json()
        assert challenge.startswith("Bearer ")
        assert "error=" not in challenge  # no token was sent
        metadata = f"{srv.url}/.well-known/oauth-protected-resource/api/mcp/id/r1"
        assert f'resource_metadata="{metadata}"' in challenge
        assert "an API key is expected" in body["error"]["message"]
        assert body["error"]["data"] == {"mcp": "MCP_UNAUTHORIZED"}
        headers = {"Authorization": "Bearer wrong"}
        async with http.post(srv.url + "/api/mcp/id/r1", json={}, headers=headers) as resp:
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        async with http.get(metadata) as resp:
            assert resp.status == 200
            document = await resp.json()
        assert document["resource"] == f"{srv.url}/api/mcp/id/r1"
        assert "authorization_servers" not in document
        assert "API key" in document["infero_bearer_token"]
        async with http.get(srv.url + "/.well-known/oauth-protected-resource") as resp:
            assert (await resp.json())["resource"] == f"{srv.url}/"


async def test_a_2026_listen_stream_is_not_a_call_and_has_no_call_timeout() -> None:
    async with (
        running_server(broker_max_concurrency_per_client=1, broker_call_timeout=0.2) as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        url = srv.url + "/api/mcp/id/r1"
        headers = {
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28",
        }
        listen = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": {}}
        async with asyncio.timeout(5):
            listening = asyncio.create_task(http.post(url, json=listen, headers=headers))
            opened = await relay.next_request()
            await relay.head(opened.id, 200, [("Content-Type", "text/event-stream")])
            stream = await listening
            assert stream.status == 200
            call = asyncio.create_task(
                http.post(
                    url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers
                )
            )
            answered = await relay.next_request()
            await relay.reply(answered.id, b'{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}')
            async with await call as resp:
                assert resp.status == 200  # the open listen stream took no call slot
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):  # five times BROKER_CALL_TIMEOUT: still open
                await stream.content.read(1)
        stream.close()


async def test_a_silent_get_stream_outlives_broker_call_timeout() -> None:
    async with (
        running_server(broker_call_timeout=0.2) as srv,
        scripted_connector(srv.url, path="/api/mcp/connect", kind="mcp", id="r1") as relay,
        aiohttp.ClientSession() as http,
    ):
        headers = {"Accept": "text/event-stream", "Mcp-Session-Id": "s1"}
        async with asyncio.timeout(5):
            opening = asyncio.create_task(http.get(srv.url + "/api/mcp/id/r1", headers=headers))
            incoming = await relay.next_request()
            await relay.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            stream = await opening
            assert stream.status == 200
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):  # five times BROKER_CALL_TIMEOUT: still open
                await stream.content.read(1)
        stream.close()
