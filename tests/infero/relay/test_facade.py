"""The loopback facade over a real stdio FastMCP server: sessions, isolation, restarts, cancel."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client

from infero.common.settings import load_settings
from infero.relay.facade import Facade
from infero.relay.providers import stdio_opener
from infero.relay.settings import RelaySettings

PROVIDER = Path(__file__).parents[2] / "e2e_mcp" / "provider.py"

SPAWN = 20.0
"""Seconds for a stdio child to import FastMCP and answer (slow on a busy 2-core machine)."""

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
SSE = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def provider_settings() -> RelaySettings:
    return load_settings(
        RelaySettings,
        environ={"MCP_STDIO_COMMAND": sys.executable, "MCP_STDIO_ARGS": f"{PROVIDER} stdio"},
    )


@pytest.fixture
async def facade() -> AsyncIterator[Facade]:
    front = Facade(stdio_opener(provider_settings(), {}), max_sessions=2, label="stdio")
    await front.start()
    try:
        yield front
    finally:
        await front.close()


def text(result: Any) -> str:
    return str(result.content[0].text)


async def open_session(http: aiohttp.ClientSession, url: str) -> str:
    async with asyncio.timeout(SPAWN), http.post(url, json=INIT, headers=SSE) as resp:
        assert resp.status == 200
        await resp.read()
        session = resp.headers["Mcp-Session-Id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {**SSE, "Mcp-Session-Id": session}
    async with http.post(url, json=note, headers=headers) as resp:
        assert resp.status == 202
    return session


async def call(http: aiohttp.ClientSession, url: str, session: str, name: str) -> Any:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name}}
    headers = {**SSE, "Mcp-Session-Id": session}
    async with asyncio.timeout(SPAWN), http.post(url, json=body, headers=headers) as resp:
        raw = (await resp.read()).decode()
    data = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    return json.loads(data[-1])


async def test_each_session_has_its_own_child_and_state(facade: Facade) -> None:
    async with (
        asyncio.timeout(2 * SPAWN),
        Client(facade.url, mode="legacy") as one,
        Client(facade.url, mode="legacy") as two,
    ):
        await one.call_tool("remember", {"value": "one"})
        assert text(await two.call_tool("recall", {})) == ""
        await two.call_tool("remember", {"value": "two"})
        assert text(await one.call_tool("recall", {})) == "one"
        assert facade.session_count == 2
    assert facade.session_count == 0


async def test_messages_without_a_known_session_are_refused(facade: Facade) -> None:
    ping = {"jsonrpc": "2.0", "id": 3, "method": "ping"}
    async with aiohttp.ClientSession() as http:
        async with http.post(facade.url, json=ping, headers=SSE) as resp:
            assert resp.status == 400
        headers = {**SSE, "Mcp-Session-Id": "nope"}
        async with http.post(facade.url, json=ping, headers=headers) as resp:
            assert resp.status == 404
        async with http.get(facade.url, headers=headers) as resp:
            assert resp.status == 404
        async with http.post(facade.url, data=b"{oops", headers=SSE) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == -32700


async def test_a_crashed_child_ends_its_session_and_the_next_initialize_starts_a_new_one(
    facade: Facade,
) -> None:
    async with aiohttp.ClientSession() as http:
        first = await open_session(http, facade.url)
        answer = await call(http, facade.url, first, "crash")
        assert "error" in answer
        assert facade.session_count == 0
        headers = {**SSE, "Mcp-Session-Id": first}
        ping = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
        async with http.post(facade.url, json=ping, headers=headers) as resp:
            assert resp.status == 404
        second = await open_session(http, facade.url)
        assert second != first
        answer = await call(http, facade.url, second, "favorite/color")
        assert answer["result"]["content"][0]["text"] == "blue with a hint of green"


async def test_a_client_that_goes_away_cancels_its_call_in_the_child(facade: Facade) -> None:
    async with aiohttp.ClientSession() as http:
        session = await open_session(http, facade.url)
        body = {
            "jsonrpc": "2.0",
            "id": 9,
            "method": "tools/call",
            "params": {"name": "wait_forever", "_meta": {"progressToken": "p"}},
        }
        headers = {**SSE, "Mcp-Session-Id": session}
        async with asyncio.timeout(SPAWN), http.post(facade.url, json=body, headers=headers) as r:
            async for line in r.content:
                if b"notifications/progress" in line:
                    break  # the tool runs; leave without reading its answer
        async with asyncio.timeout(5):
            while (await call(http, facade.url, session, "cancellations"))["result"]["content"][0][
                "text"
            ] != "1":
                pass  # each check is a real round trip to the child


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_when_every_session_is_busy_a_new_one_is_refused_with_503() -> None:
    front = Facade(stdio_opener(provider_settings(), {}), max_sessions=1)
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            first = await open_session(http, front.url)
            listen = {"Accept": "text/event-stream", "Mcp-Session-Id": first}
            async with http.get(front.url, headers=listen) as stream:
                assert stream.status == 200
                async with http.post(front.url, json=INIT, headers=SSE) as resp:
                    assert resp.status == 503
                    assert "too many" in (await resp.json())["error"]["message"]
    finally:
        await front.close()


async def test_idle_sessions_make_room_at_the_limit_and_are_reaped_after_the_idle_timeout() -> None:
    clock = Clock()
    front = Facade(stdio_opener(provider_settings(), {}), max_sessions=1, clock=clock)
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            first = await open_session(http, front.url)
            clock.now = 10.0
            second = await open_session(http, front.url)
            assert second != first
            assert front.session_count == 1
            ping = {"jsonrpc": "2.0", "id": 4, "method": "ping"}
            gone = {**SSE, "Mcp-Session-Id": first}
            async with http.post(front.url, json=ping, headers=gone) as resp:
                assert resp.status == 404
            clock.now = 10.0 + 1799.0
            assert await front.reap() == 0
            clock.now = 10.0 + 1800.0
            assert await front.reap() == 1
            assert front.session_count == 0
    finally:
        await front.close()


async def test_a_command_that_cannot_start_answers_502() -> None:
    settings = load_settings(RelaySettings, environ={"MCP_STDIO_COMMAND": "/nonexistent/mcp"})
    front = Facade(stdio_opener(settings, {}))
    await front.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(front.url, json=INIT, headers=SSE) as resp,
        ):
            assert resp.status == 502
            assert (await resp.json())["id"] == 1
    finally:
        await front.close()


async def test_a_json_only_client_gets_json_and_its_notifications_wait_for_the_get_stream(
    facade: Facade,
) -> None:
    async with aiohttp.ClientSession() as http:
        session = await open_session(http, facade.url)
        body = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {
                "name": "count_up",
                "arguments": {"steps": 2},
                "_meta": {"progressToken": 1},
            },
        }
        headers = {"Accept": "application/json", "Mcp-Session-Id": session}
        async with asyncio.timeout(SPAWN), http.post(facade.url, json=body, headers=headers) as r:
            assert r.headers["Content-Type"].startswith("application/json")
            answer = await r.json()
        assert answer["result"]["content"][0]["text"] == "counted to 2"
        listen = {"Accept": "text/event-stream", "Mcp-Session-Id": session}
        async with asyncio.timeout(5), http.get(facade.url, headers=listen) as stream:
            seen = []
            async for line in stream.content:
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:])["params"]["progress"])
                if len(seen) == 2:
                    break
        assert seen == [1, 2]
