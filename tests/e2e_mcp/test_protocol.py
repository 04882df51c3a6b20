"""The whole MCP protocol through server + relay, for stateful HTTP, stdio and legacy SSE providers.

An MCP client must not be able to tell the relay from a direct connection: sessions, SSE
answers, progress, server-initiated sampling, resources, prompts and cancellation all work.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anyio
import mcp_types as types
import pytest

API_KEY = "client-key-1"


@pytest.fixture(params=["stateful", "stdio", "sse"])
def provider(request: pytest.FixtureRequest, stdio_provider: dict[str, str]) -> dict[str, str]:
    """Relay env for one provider form."""
    if request.param == "stdio":
        return stdio_provider
    if request.param == "sse":
        return {"MCP_SSE_URL": request.getfixturevalue("sse_url")}
    return {"PROVIDER_URL": request.getfixturevalue("stateful_url")}


def calling(s: Any) -> bool:
    """A tools/call is in flight (the SDK may list tools first, which also counts as a call)."""
    relay = s.registry.relays[s.relay.relay_id]
    return bool(relay.inflight == 1 and relay.functions.get("tools/call", 0) >= 1)


def text(result: Any) -> str:
    return str(result.content[0].text)


async def test_tools_resources_prompts_progress_and_sampling_work(
    provider: Any, make_stack: Any, connect: Any, sampling: Any
) -> None:
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with make_stack({"api_key": API_KEY}, **provider) as s:
        async with connect(s.url, sampling_callback=sampling) as client:
            assert client.server_info.name == "preferences"
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"favorite/color", "count_up", "ask_llm"} <= tools
            assert text(await client.call_tool("favorite/color", {})) == "blue with a hint of green"
            counted = await client.call_tool(
                "count_up", {"steps": 3}, progress_callback=on_progress
            )
            assert text(counted) == "counted to 3"
            assert progress == [1, 2, 3]
            asked = await client.call_tool("ask_llm", {"question": "why?"})
            assert text(asked) == "answer to why?"
            resource = await client.read_resource("pref://theme")
            assert resource.contents[0].text == "dark"
            prompt = await client.get_prompt("greet", {"name": "Ann"})
            assert prompt.messages[0].content.text == "Say hello to Ann."
            sessions = s.registry.state().sessions
        assert len(sessions) == 1
        assert sessions[0].client_id == s.relay.relay_id


async def test_two_sessions_keep_their_own_state(
    provider: Any, make_stack: Any, connect: Any
) -> None:
    async with make_stack({"api_key": API_KEY}, **provider) as s:
        async with connect(s.url) as alice, connect(s.url) as bob:
            await alice.call_tool("remember", {"value": "alice's"})
            await bob.call_tool("remember", {"value": "bob's"})
            assert text(await alice.call_tool("recall", {})) == "alice's"
            assert text(await bob.call_tool("recall", {})) == "bob's"
            assert len(s.registry.state().sessions) == 2
        # both clients ended their sessions with DELETE
        assert s.registry.state().sessions == []


async def test_cancelling_a_slow_tool_stops_it_on_the_provider(
    provider: Any, make_stack: Any, connect: Any
) -> None:
    async with make_stack({"api_key": API_KEY}, **provider) as s, connect(s.url) as client:
        before = int(text(await client.call_tool("cancellations", {})))
        started = asyncio.Event()

        async def running(progress: float, total: float | None, message: str | None) -> None:
            started.set()  # the provider runs the tool: a cancellation now reaches a known call

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.call_tool("wait_forever", {}, progress_callback=running))
            async with asyncio.timeout(20):
                await started.wait()
                await s.server.wait_for(lambda: calling(s))
            tg.cancel_scope.cancel()
        async with asyncio.timeout(20):
            while int(text(await client.call_tool("cancellations", {}))) == before:
                pass  # each check is a real round trip to the provider
        async with asyncio.timeout(20):
            await s.server.wait_for(lambda: s.registry.relays[s.relay.relay_id].inflight == 0)


async def test_a_client_that_disconnects_mid_call_stops_the_tool_on_the_provider(
    provider: Any, make_stack: Any
) -> None:
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
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }

    def tool(request_id: int, name: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"name": name, "arguments": {}}
        if meta:
            params["_meta"] = meta
        return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}

    async def count(http: aiohttp.ClientSession, url: str, session: dict[str, str]) -> str:
        async with http.post(url, json=tool(3, "cancellations"), headers=session) as resp:
            raw = (await resp.read()).decode()
        data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        answer = json.loads(data[-1] if data else raw)
        return str(answer["result"]["content"][0]["text"])

    async with make_stack({"api_key": API_KEY}, **provider) as s:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(s.url, json=init) as resp:
                await resp.read()
                session = {"Mcp-Session-Id": resp.headers["Mcp-Session-Id"]}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            async with http.post(s.url, json=note, headers=session) as resp:
                assert resp.status == 202
            before = await count(http, s.url, session)
            slow = tool(2, "wait_forever", {"progressToken": "p"})
            async with asyncio.timeout(5), http.post(s.url, json=slow, headers=session) as resp:
                async for line in resp.content:
                    if b"notifications/progress" in line:
                        break  # the tool runs: go away without reading the answer
        async with aiohttp.ClientSession(headers=headers) as http, asyncio.timeout(5):
            while await count(http, s.url, session) == before:
                pass  # each check is a real round trip to the provider


async def test_elicitation_and_logging_reach_the_client(
    provider: Any, make_stack: Any, connect: Any
) -> None:
    logged: list[str] = []
    asked: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"value": True})

    async with (
        make_stack({"api_key": API_KEY}, **provider) as s,
        connect(s.url, logging_callback=on_log, elicitation_callback=on_elicit) as client,
    ):
        result = await client.call_tool("confirm", {"action": "deploy"})
    assert text(result) == "deploy: True"
    assert asked == ["Really deploy?"]
    assert any("about to deploy" in line for line in logged)


async def test_a_client_pinned_to_2026_07_28_works_through_every_provider(
    provider: Any, make_stack: Any, connect: Any
) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with make_stack({"api_key": API_KEY}, **provider) as s:
        async with connect(s.url, mode="2026-07-28") as client:
            assert client.protocol_version == "2026-07-28"
            assert "count_up" in {t.name for t in (await client.list_tools()).tools}
            counted = await client.call_tool(
                "count_up", {"steps": 2}, progress_callback=on_progress
            )
            assert text(counted) == "counted to 2"
            assert seen == [1, 2]
            resource = await client.read_resource("pref://theme")
            assert resource.contents[0].text == "dark"
        assert s.registry.state().sessions == []
