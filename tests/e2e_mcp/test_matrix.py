"""The closing matrix: the official MCP SDK client, direct and through infero, per provider.

For each provider form (stdio, legacy SSE, Streamable HTTP: one real FastMCP server) the same
SDK scenario runs twice, once against the provider directly and once through
`infero server` + `infero mcp`, and every feature must give the same, successful result:
handshake, tools, resources, prompts, progress, sampling, elicitation, logging, cancellation,
and the 2026-07-28 protocol without a handshake (where the SDK client speaks it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from e2e_mcp.conftest import API_KEY, PROVIDER, answer_sampling, stack, stdio_env

Opener = Callable[[], AbstractAsyncContextManager[TransportStreams]]

HANDSHAKE = [
    "initialize",
    "tools/list",
    "tools/call",
    "resources/read",
    "prompts/get",
    "progress",
    "sampling",
    "elicitation",
    "logging",
    "cancel",
]
STATELESS = ["2026-07-28 tools/list", "2026-07-28 tools/call + progress", "2026-07-28 resources"]


def text(result: Any) -> str:
    return str(result.content[0].text)


async def handshake_era(opener: Opener) -> dict[str, str]:
    """Every feature of the handshake era; feature -> "ok" or what went wrong."""
    outcome: dict[str, str] = {}
    logged: list[str] = []
    seen: list[float] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def on_elicit(context: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"value": True})

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def check(feature: str, probe: Any) -> None:
        try:
            async with asyncio.timeout(30):
                outcome[feature] = "ok" if await probe() else "wrong answer"
        except Exception as exc:  # the matrix records every failure instead of stopping
            outcome[feature] = f"{type(exc).__name__}: {exc}"

    async with Client(
        opener(),
        mode="legacy",
        sampling_callback=answer_sampling,
        elicitation_callback=on_elicit,
        logging_callback=on_log,
    ) as client:
        info = client.server_info
        outcome["initialize"] = "ok" if info and info.name == "preferences" else "wrong"

        async def tools_list() -> bool:
            return "count_up" in {t.name for t in (await client.list_tools()).tools}

        async def tools_call() -> bool:
            return text(await client.call_tool("favorite/color", {})) == "blue with a hint of green"

        async def resource() -> bool:
            theme = (await client.read_resource("pref://theme")).contents[0]
            return isinstance(theme, types.TextResourceContents) and theme.text == "dark"

        async def prompt() -> bool:
            got = (await client.get_prompt("greet", {"name": "Ann"})).messages[0].content
            return isinstance(got, types.TextContent) and got.text == "Say hello to Ann."

        async def progress() -> bool:
            counted = await client.call_tool(
                "count_up", {"steps": 3}, progress_callback=on_progress
            )
            return text(counted) == "counted to 3" and seen == [1, 2, 3]

        async def sampling() -> bool:
            return text(await client.call_tool("ask_llm", {"question": "why?"})) == "answer to why?"

        async def elicitation() -> bool:
            return text(await client.call_tool("confirm", {"action": "deploy"})) == "deploy: True"

        async def logging_() -> bool:
            return any("about to deploy" in line for line in logged)

        async def cancel() -> bool:
            before = int(text(await client.call_tool("cancellations", {})))
            started = asyncio.Event()

            async def running(progress: float, total: float | None, message: str | None) -> None:
                started.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: client.call_tool("wait_forever", {}, progress_callback=running)
                )
                await started.wait()
                tg.cancel_scope.cancel()
            while int(text(await client.call_tool("cancellations", {}))) == before:
                pass  # each check is a real round trip to the provider
            return True

        for feature, probe in zip(
            HANDSHAKE[1:],
            [
                tools_list,
                tools_call,
                resource,
                prompt,
                progress,
                sampling,
                elicitation,
                logging_,
                cancel,
            ],
            strict=True,
        ):
            await check(feature, probe)
    return outcome


async def stateless_era(opener: Opener) -> dict[str, str]:
    """The 2026-07-28 protocol: no handshake, no session."""
    outcome: dict[str, str] = {}
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    try:
        async with asyncio.timeout(60), Client(opener(), mode="2026-07-28") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            outcome[STATELESS[0]] = "ok" if "count_up" in tools else "wrong answer"
            counted = await client.call_tool(
                "count_up", {"steps": 2}, progress_callback=on_progress
            )
            right = text(counted) == "counted to 2" and seen == [1, 2]
            outcome[STATELESS[1]] = "ok" if right else "wrong answer"
            theme = (await client.read_resource("pref://theme")).contents[0]
            dark = isinstance(theme, types.TextResourceContents) and theme.text == "dark"
            outcome[STATELESS[2]] = "ok" if dark else "wrong answer"
    except Exception as exc:  # the matrix records the failure
        for feature in STATELESS:
            outcome.setdefault(feature, f"{type(exc).__name__}: {exc}")
    return outcome


def through_infero(url: str) -> Opener:
    def opener() -> AbstractAsyncContextManager[TransportStreams]:
        @asynccontextmanager
        async def connect() -> AsyncIterator[TransportStreams]:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            timeout = httpx2.Timeout(30)
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
                streamable_http_client(url, http_client=http) as streams,
            ):
                yield streams

        return connect()

    return opener


@pytest.fixture(params=["stdio", "sse", "http"])
def provider(request: pytest.FixtureRequest) -> tuple[str, Opener, dict[str, str]]:
    """(name, direct opener, relay env) of one provider form."""
    if request.param == "stdio":
        params = StdioServerParameters(command=sys.executable, args=[str(PROVIDER), "stdio"])
        return "stdio", lambda: stdio_client(params), stdio_env()
    if request.param == "sse":
        url = request.getfixturevalue("sse_url")
        return "sse", lambda: sse_client(url), {"MCP_SSE_URL": url}
    url = request.getfixturevalue("stateful_url")
    return "http", lambda: streamable_http_client(url), {"PROVIDER_URL": url}


async def test_the_sdk_sees_the_same_through_infero_as_direct(
    provider: tuple[str, Opener, dict[str, str]],
) -> None:
    name, direct, env = provider
    matrix = {"direct": {**await handshake_era(direct), **await stateless_era(direct)}}
    async with stack({"api_key": API_KEY}, **env) as s:
        relayed = through_infero(s.url)
        matrix["infero"] = {**await handshake_era(relayed), **await stateless_era(relayed)}
    rows = [
        f"{name:6} {feature:34} direct={matrix['direct'][feature]} "
        f"infero={matrix['infero'][feature]}"
        for feature in HANDSHAKE + STATELESS
    ]
    print("\n".join(rows))  # the matrix, for the report (pytest -s)
    assert matrix["infero"] == matrix["direct"], "\n".join(rows)
    assert set(matrix["infero"].values()) == {"ok"}, "\n".join(rows)
