"""Access rules, limits and failures of `/api/mcp/id/{id}`, with a real relay and provider."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anyio
import pytest
from mcp.shared.exceptions import MCPError

from infero.common.backoff import Backoff
from infero.relay.runtime import McpRelay
from support.server import running_server

API_KEY = "client-key-1"
RELAY_TOKEN = "relay-token-9"
CLIENT_KEY = "relay-secret"

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def calling(s: Any) -> bool:
    """A tools/call is in flight (the SDK may list tools first, which also counts as a call)."""
    relay = s.registry.relays[s.relay.relay_id]
    return bool(relay.inflight == 1 and relay.functions.get("tools/call", 0) >= 1)


async def post(url: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    headers = dict(ACCEPT)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


@pytest.mark.parametrize(
    ("server_key", "relay_token", "accepted", "refused"),
    [
        (None, None, [None, "anything"], []),
        (None, RELAY_TOKEN, [RELAY_TOKEN], [None, "wrong"]),
        (API_KEY, None, [API_KEY], [None, "wrong", RELAY_TOKEN]),
        (API_KEY, RELAY_TOKEN, [API_KEY, RELAY_TOKEN], [None, "wrong"]),
    ],
)
async def test_every_access_combination(
    server_key: str | None,
    relay_token: str | None,
    accepted: list[str | None],
    refused: list[str | None],
    stateless_url: Any,
    make_stack: Any,
) -> None:
    env = {"PROVIDER_URL": stateless_url}
    if relay_token:
        env["AUTH_TOKEN"] = relay_token
    options = {"api_key": server_key} if server_key else {}
    async with make_stack(options, **env) as s:
        for token in accepted:
            status, answer = await post(s.url, INIT, token)
            assert status == 200, token
            assert answer["result"]["serverInfo"]["name"] == "preferences"
        for token in refused:
            status, answer = await post(s.url, INIT, token)
            assert status == 401, token
            assert answer["error"]["data"]["mcp"] == "MCP_UNAUTHORIZED"


async def test_unknown_relay_id_is_unavailable_but_hidden_from_callers_without_a_key(
    stateless_url: Any, make_stack: Any
) -> None:
    async with make_stack({"api_key": API_KEY}, PROVIDER_URL=stateless_url) as s:
        url = f"{s.server.url}/api/mcp/id/nobody"
        status, answer = await post(url, INIT, API_KEY)
        assert status == 503
        assert answer["error"]["data"]["mcp"] == "MCP_PROVIDER_UNAVAILABLE"
        assert answer["id"] is None
        status, answer = await post(url, INIT, "wrong")
        assert status == 401


async def test_malformed_and_oversized_posts_get_json_rpc_errors(
    stateless_url: Any, make_stack: Any
) -> None:
    options = {"api_key": API_KEY, "broker_max_req_bytes": 2000}
    async with make_stack(options, PROVIDER_URL=stateless_url) as s:
        status, answer = await post(s.url, b"{not json", API_KEY)
        assert (status, answer["error"]["code"]) == (400, -32700)
        assert answer["error"]["data"]["mcp"] == "MCP_SCHEMA_ERROR"
        status, answer = await post(s.url, {"id": 7, "method": "tools/list"}, API_KEY)
        assert (status, answer["error"]["code"], answer["id"]) == (400, -32600, 7)
        big = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"x": "y" * 5000}}
        status, answer = await post(s.url, big, API_KEY)
        assert status == 413
        assert answer["error"]["data"]["mcp"] == "MCP_LIMIT_EXCEEDED"
        # the relay is unharmed
        status, _ = await post(s.url, INIT, API_KEY)
        assert status == 200


@pytest.mark.parametrize(
    ("server_limit", "relay_limit"),
    [(1, "16"), (16, "1")],
    ids=["BROKER_MAX_CONCURRENCY_PER_CLIENT", "MCP_MAX_INFLIGHT"],
)
async def test_calls_beyond_the_concurrency_limit_are_refused_with_429(
    server_limit: int, relay_limit: str, stateful_url: Any, make_stack: Any, connect: Any
) -> None:
    options = {"api_key": API_KEY, "broker_max_concurrency_per_client": server_limit}
    env = {"PROVIDER_URL": stateful_url, "MCP_MAX_INFLIGHT": relay_limit}
    async with make_stack(options, **env) as s, connect(s.url) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "wait_forever", {})
            async with asyncio.timeout(5):
                await s.server.wait_for(lambda: calling(s))
            with pytest.raises(MCPError) as refused:
                await client.call_tool("favorite/color", {})
            tg.cancel_scope.cancel()
        assert refused.value.error.data["mcp"] == "MCP_LIMIT_EXCEEDED"
        async with asyncio.timeout(5):
            await s.server.wait_for(lambda: s.registry.relays[s.relay.relay_id].inflight == 0)
        result = await client.call_tool("favorite/color", {})
        assert result.content[0].text == "blue with a hint of green"


async def test_a_call_without_answer_times_out_with_504(
    stateless_url: Any, make_stack: Any
) -> None:
    options = {"api_key": API_KEY, "broker_call_timeout": 0.3}
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "wait_forever"}}
    async with make_stack(options, PROVIDER_URL=stateless_url) as s:
        status, answer = await post(s.url, call, API_KEY)
    assert status == 504
    assert answer["id"] == 5
    assert answer["error"]["data"]["mcp"] == "MCP_TIMEOUT"


async def test_an_answer_over_the_size_limit_ends_with_a_json_rpc_error(
    stateful_url: Any, make_stack: Any, connect: Any
) -> None:
    options = {"api_key": API_KEY, "broker_max_resp_bytes": 600}
    async with make_stack(options, PROVIDER_URL=stateful_url) as s, connect(s.url) as client:
        with pytest.raises(MCPError) as failed:
            await client.list_tools()
    assert failed.value.error.data["mcp"] == "MCP_LIMIT_EXCEEDED"


async def test_relay_gone_mid_call_gives_a_clean_error_and_others_keep_working(
    stateful_url: Any, make_stack: Any, start_relay: Any, connect: Any
) -> None:
    async with make_stack({"api_key": API_KEY}, PROVIDER_URL=stateful_url) as s:
        env = {"PROVIDER_URL": stateful_url, "CLIENT_ID": "second"}
        async with start_relay(s.server, env), connect(s.url) as client:
            other = f"{s.server.url}/api/mcp/id/second"
            async with connect(other) as survivor:
                failure: list[BaseException] = []

                async def slow_call() -> None:
                    try:
                        await client.call_tool("wait_forever", {})
                    except MCPError as exc:
                        failure.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(slow_call)
                    async with asyncio.timeout(5):
                        await s.server.wait_for(lambda: calling(s))
                    s.relay.request_stop()  # the relay process goes away mid-call
                (error,) = failure
                assert isinstance(error, MCPError)
                assert error.error.data["mcp"] == "MCP_PROVIDER_UNAVAILABLE"
                result = await survivor.call_tool("favorite/color", {})
                assert result.content[0].text == "blue with a hint of green"
        assert list(s.registry.relays) == []


async def test_a_relay_reconnects_under_the_id_the_server_gave_it(
    stateless_url: Any, start_relay: Any
) -> None:
    async with running_server(client_key=CLIENT_KEY) as server:
        registry = server.embedded.relays
        env = {"PROVIDER_URL": stateless_url, "RECONNECT": "true"}
        async with start_relay(server, env) as (relay, _):
            first_id = relay.relay_id
            assert first_id in registry.relays
            relay.link_client.backoff = Backoff(schedule=(0.0,), ceiling=0.0)
            old_link = registry.relays[first_id].link
            await old_link.close()
            async with asyncio.timeout(5):
                await server.wait_for(
                    lambda: (
                        first_id in registry.relays
                        and registry.relays[first_id].link is not old_link
                        and registry.relays[first_id].status == "ready"
                    )
                )
            status, _answer = await post(f"{server.url}/api/mcp/id/{first_id}", INIT)
        assert status == 200
        assert relay.relay_id == first_id


async def test_wrong_client_key_and_an_id_in_use_are_refused(
    stateless_url: Any, start_relay: Any, make_stack: Any
) -> None:
    async with make_stack({}, PROVIDER_URL=stateless_url, CLIENT_ID="taken") as s:
        settings = s.relay.settings.model_copy(update={"client_key": "wrong"})
        assert await asyncio.wait_for(McpRelay(settings).run(), 10) == 1
        twin = s.relay.settings.model_copy()
        assert await asyncio.wait_for(McpRelay(twin).run(), 10) == 1
        assert list(s.registry.relays) == ["taken"]
        status, _ = await post(s.url, INIT)
        assert status == 200


async def test_a_relay_whose_provider_is_down_is_listed_not_ready_and_answers_503(
    start_relay: Any,
) -> None:
    async with running_server(client_key=CLIENT_KEY) as server:
        env = {"PROVIDER_URL": "http://127.0.0.1:9/mcp", "CLIENT_ID": "down"}
        async with start_relay(server, env, wait_ready=False):
            state = server.embedded.relays.state()
            assert [(c.id, c.status) for c in state.clients] == [("down", "not_ready")]
            status, answer = await post(f"{server.url}/api/mcp/id/down", INIT)
    assert status == 503
    assert answer["error"]["data"]["mcp"] == "MCP_PROVIDER_UNAVAILABLE"


async def test_a_json_answer_over_the_size_limit_is_a_clean_json_rpc_error(
    stateless_url: Any, make_stack: Any
) -> None:
    options = {"api_key": API_KEY, "broker_max_resp_bytes": 300}
    tools = {"jsonrpc": "2.0", "id": 6, "method": "tools/list"}
    async with make_stack(options, PROVIDER_URL=stateless_url) as s:
        status, answer = await post(s.url, tools, API_KEY)
    assert status == 502
    assert answer["id"] == 6
    assert answer["error"]["data"]["mcp"] == "MCP_LIMIT_EXCEEDED"
