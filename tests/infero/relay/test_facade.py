"""The loopback facade over a real stdio FastMCP server: sessions, isolation, restarts, cancel."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from mcp import Client
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCRequest, JSONRPCResponse

from infero.common.settings import load_settings
from infero.relay import providers
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


ROUGH = Path(__file__).with_name("rough_provider.py")


def rough_settings() -> RelaySettings:
    """The misbehaving stdio provider (rough_provider.py)."""
    return load_settings(
        RelaySettings, environ={"MCP_STDIO_COMMAND": sys.executable, "MCP_STDIO_ARGS": str(ROUGH)}
    )


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


async def test_when_every_session_has_a_request_in_flight_a_new_one_gets_503_retry_after() -> None:
    front = Facade(stdio_opener(rough_settings(), {}), max_sessions=1)
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            first = await open_session(http, front.url)
            hang = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "hang"}}
            headers = {**SSE, "Mcp-Session-Id": first}
            async with http.post(front.url, json=hang, headers=headers) as stuck:
                assert stuck.status == 200
                async with http.post(front.url, json=INIT, headers=SSE) as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "5"
                    error = (await resp.json())["error"]
                    assert "MCP_MAX_SESSIONS" in error["message"]
                    assert error["data"]["mcp"] == "MCP_LIMIT_EXCEEDED"
    finally:
        await front.close()


async def test_a_session_holding_only_a_get_stream_is_idle_and_makes_room() -> None:
    front = Facade(stdio_opener(rough_settings(), {}), max_sessions=1)
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            first = await open_session(http, front.url)
            listen = {"Accept": "text/event-stream", "Mcp-Session-Id": first}
            async with asyncio.timeout(SPAWN), http.get(front.url, headers=listen) as stream:
                assert stream.status == 200
                second = await open_session(http, front.url)
                assert second != first
                assert await stream.content.read() == b""  # the evicted session's stream ends
            assert front.session_count == 1
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


async def test_an_unreadable_line_or_a_wrong_answer_id_fails_the_pending_call_at_once() -> None:
    front = Facade(stdio_opener(rough_settings(), {}))
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            session = await open_session(http, front.url)
            garbage = await call(http, front.url, session, "garbage")
            assert "not JSON-RPC" in garbage["error"]["message"]
            assert garbage["error"]["data"]["mcp"] == "MCP_UPSTREAM_ERROR"
            assert garbage["id"] == 2
            lost = await call(http, front.url, session, "wrong_id")
            assert "unknown request id" in lost["error"]["message"]
            fine = await call(http, front.url, session, "still here")
            assert fine["result"]["content"][0]["text"] == "still here"
    finally:
        await front.close()


async def test_child_stderr_is_capped_and_prefixed_and_a_dying_child_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="infero.relay")
    front = Facade(stdio_opener(rough_settings(), {}), label="stdio provider")
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            session = await open_session(http, front.url)
            await call(http, front.url, session, "shout")
            died = await call(http, front.url, session, "exit")
            assert died["error"]["data"]["mcp"] == "MCP_UPSTREAM_ERROR"
    finally:
        await front.close()
    lines = [r for r in caplog.records if r.name == "infero.relay.providers"]
    long_line = next(r.getMessage() for r in lines if "more bytes" in r.getMessage())
    assert long_line.startswith("stdio child 1: xxx")
    assert long_line.endswith("[... 98000 more bytes]")
    assert any(r.getMessage() == "stdio child 1: short line" for r in lines)
    ended = [r for r in caplog.records if "ended the connection" in r.getMessage()]
    assert [r.levelno for r in ended] == [logging.WARNING]


@asynccontextmanager
async def slow_to_close(barrier: asyncio.Barrier) -> AsyncIterator[Any]:
    """A provider answering every request with `{}`, that only finishes closing once every
    other connection is closing too."""
    to_facade, from_provider = anyio.create_memory_object_stream[Any](10)
    to_provider, from_facade = anyio.create_memory_object_stream[Any](10)

    async def answer() -> None:
        async for item in from_facade:
            if isinstance(item.message, JSONRPCRequest):
                reply = JSONRPCResponse(jsonrpc="2.0", id=item.message.id, result={})
                await to_facade.send(SessionMessage(reply))

    async with to_facade, from_provider, to_provider, from_facade, anyio.create_task_group() as tg:
        tg.start_soon(answer)
        try:
            yield from_provider, to_provider
        finally:
            with anyio.CancelScope(shield=True):
                await barrier.wait()
            tg.cancel_scope.cancel()


async def test_closing_the_facade_closes_its_sessions_in_parallel() -> None:
    barrier = asyncio.Barrier(3)
    front = Facade(lambda: slow_to_close(barrier), max_sessions=5)
    await front.start()
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                await open_session(http, front.url)
            assert front.session_count == 3
    finally:
        async with asyncio.timeout(10):  # sequential closing would wait at the barrier forever
            await front.close()
    assert front.session_count == 0


async def test_a_2026_client_works_stateless_and_concurrent_clients_keep_their_answers(
    facade: Facade,
) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with (
        asyncio.timeout(2 * SPAWN),
        Client(facade.url, mode="2026-07-28") as one,
        Client(facade.url, mode="2026-07-28") as two,
    ):
        assert one.protocol_version == "2026-07-28"
        tools = {t.name for t in (await one.list_tools()).tools}
        assert "count_up" in tools
        first, second = await asyncio.gather(
            one.call_tool("count_up", {"steps": 2}, progress_callback=on_progress),
            two.call_tool("favorite/color", {}),
        )
        assert text(first) == "counted to 2"
        assert text(second) == "blue with a hint of green"
        assert seen == [1, 2]
        assert facade.session_count == 0  # no handshake, no session


async def test_a_default_sdk_client_discovers_2026_through_the_facade(facade: Facade) -> None:
    async with asyncio.timeout(2 * SPAWN), Client(facade.url) as client:
        assert client.protocol_version == "2026-07-28"
        assert text(await client.call_tool("favorite/color", {})) == "blue with a hint of green"


async def test_stateless_requests_outside_post_get_405(facade: Facade) -> None:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession() as http:
        async with http.get(facade.url, headers=headers) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        async with http.post(facade.url, json=note, headers={**SSE, **headers}) as resp:
            assert resp.status == 202


def test_an_sse_provider_stream_may_stay_silent_as_long_as_a_session_may_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def fake_sse_client(url: str, **options: Any) -> Any:
        seen.update(options)
        return None

    monkeypatch.setattr(providers, "sse_client", fake_sse_client)
    settings = load_settings(
        RelaySettings,
        environ={
            "MCP_SSE_URL": "http://127.0.0.1:9/sse",
            "MCP_HTTP_TIMEOUT": "5m",
            "MCP_SESSION_IDLE_TIMEOUT": "30m",
        },
    )
    providers.sse_opener(settings)()
    assert seen["sse_read_timeout"] == 1800 + providers.REAP_SLACK
    assert seen["timeout"] == 30
