"""The seed's MCP walkthrough: FastMCP 'preferences' (stateless, JSON) behind `infero mcp`."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from infero.protocol.state import StateSnapshot

API_KEY = "client-key-1"


async def test_sdk_client_calls_the_seed_tool_through_the_public_url(
    stateless_url: Any, make_stack: Any, connect: Any
) -> None:
    async with make_stack(
        {"api_key": API_KEY}, PROVIDER_URL=stateless_url, CLIENT_ID="my-mcp-server-123"
    ) as s:
        assert s.url.endswith("/api/mcp/id/my-mcp-server-123")
        async with connect(s.url, mode="legacy") as client:
            tools = await client.list_tools()
            assert "favorite/color" in [t.name for t in tools.tools]
            result = await client.call_tool("favorite/color", {})
        assert result.content[0].text == "blue with a hint of green"


async def test_modern_protocol_client_works_through_the_relay(
    stateless_url: Any, make_stack: Any, connect: Any
) -> None:
    async with make_stack({"api_key": API_KEY}, PROVIDER_URL=stateless_url) as s:
        async with connect(s.url, mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("favorite/color", {})
        assert result.content[0].text == "blue with a hint of green"


async def test_hosted_llm_style_json_posts_get_json_answers(
    stateless_url: Any, make_stack: Any
) -> None:
    """What OpenAI's Responses API does: plain JSON-RPC POSTs with `authorization` as Bearer."""
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "openai-mcp", "version": "1"},
        },
    }
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "favorite/color", "arguments": {}},
    }
    async with (
        make_stack({"api_key": API_KEY}, PROVIDER_URL=stateless_url) as s,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        async with http.post(s.url, json=init) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            assert (await resp.json())["result"]["serverInfo"]["name"] == "preferences"
        async with http.post(s.url, json=call) as resp:
            answer = json.loads(await resp.read())
        async with http.get(f"{s.server.url}/api/state") as resp:
            state = StateSnapshot.model_validate(await resp.json())
        async with http.get(f"{s.server.url}/metrics") as resp:
            metrics = await resp.text()
    assert answer["id"] == 2
    assert answer["result"]["content"][0]["text"] == "blue with a hint of green"
    (relay,) = state.mcp.clients
    assert relay.functions == {"initialize": 1, "tools/call": 1}
    assert relay.calls_total == 2
    assert relay.status == "idle"
    series = f'infero_mcp_calls_total{{method="tools/call",outcome="success",relay="{relay.id}"}}'
    assert f"{series} 1.0" in metrics
    assert "infero_mcp_relays 1.0" in metrics
