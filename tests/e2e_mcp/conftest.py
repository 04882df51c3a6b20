"""Real parts for MCP end-to-end tests: FastMCP providers, the server, `infero mcp`, the SDK client.

Providers run as subprocesses (`provider.py`), each started once per module and ready when it
prints its port. The server and the relay run in-process on loopback, as `infero server` and
`infero mcp` run them. Clients are the official `mcp` SDK over streamable HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from infero.common.settings import load_settings
from infero.relay.runtime import McpRelay
from infero.relay.settings import RelaySettings
from infero.server.mcp.relays import RelayRegistry
from support.server import RunningServer, running_server

PROVIDER = Path(__file__).with_name("provider.py")

STARTUP = 30.0
"""Seconds a provider subprocess may take to import FastMCP and bind (slow on a busy 2-core CI)."""

READY = 20.0
"""Seconds for a relay to connect and find its provider ready; a stdio probe starts a Python
child that imports FastMCP, which takes seconds on a busy machine."""

CLIENT_KEY = "relay-secret"
API_KEY = "client-key-1"


def _start_provider(mode: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(PROVIDER), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(STARTUP):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"provider {mode} did not start within {STARTUP}s")
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"provider {mode} failed to start: {line!r}")
    return proc, int(line.split()[1])


@contextlib.contextmanager
def provider_process(mode: str) -> Iterator[str]:
    """A FastMCP provider subprocess; yields its MCP URL."""
    proc, port = _start_provider(mode)
    try:
        suffix = "/sse" if mode == "sse" else "/mcp"
        yield f"http://127.0.0.1:{port}{suffix}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture(scope="module")
def stateless_url() -> Iterator[str]:
    """The seed's example: FastMCP('preferences') served stateless with JSON answers."""
    with provider_process("stateless") as url:
        yield url


@pytest.fixture(scope="module")
def stateful_url() -> Iterator[str]:
    """FastMCP with sessions and SSE answers."""
    with provider_process("stateful") as url:
        yield url


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    """FastMCP over the legacy HTTP+SSE transport."""
    with provider_process("sse") as url:
        yield url


def stdio_env() -> dict[str, str]:
    """Relay settings that run `provider.py stdio` as the stdio provider."""
    return {
        "MCP_STDIO_COMMAND": sys.executable,
        "MCP_STDIO_ARGS": f"{PROVIDER} stdio",
    }


@dataclass
class Stack:
    """A server with a relay registered on it."""

    server: RunningServer
    relay: McpRelay
    task: asyncio.Task[int]

    @property
    def url(self) -> str:
        """The public MCP URL of the relay."""
        return f"{self.server.url}/api/mcp/id/{self.relay.relay_id}"

    @property
    def registry(self) -> RelayRegistry:
        return self.server.embedded.relays


def relay_settings(server: RunningServer, **env: str) -> RelaySettings:
    """Relay settings as `infero mcp` would read them from the environment."""
    values = {
        "SERVER_URL": server.url.replace("http", "ws", 1) + "/api/mcp/connect",
        "CLIENT_KEY": CLIENT_KEY,
    }
    values.update(env)
    return load_settings(RelaySettings, environ=values)


@asynccontextmanager
async def relay_running(
    server: RunningServer, env: dict[str, str], *, wait_ready: bool = True
) -> AsyncIterator[tuple[McpRelay, asyncio.Task[int]]]:
    """Run `infero mcp` in-process against `server`; wait until it is registered (and ready)."""
    relay = McpRelay(relay_settings(server, **env))
    task = asyncio.create_task(relay.run())
    registry = server.embedded.relays

    def registered() -> bool:
        entry = registry.relays.get(relay.relay_id) if relay.relay_id else None
        return entry is not None and (entry.status == "ready" or not wait_ready)

    async def arrival() -> None:
        await relay.connected.wait()
        await server.wait_for(registered)

    try:
        async with asyncio.timeout(READY):
            waiter = asyncio.create_task(arrival())
            done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                waiter.cancel()
                raise AssertionError(f"relay exited early with {task.result()}")
        yield relay, task
    finally:
        relay.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def stack(server_options: dict[str, Any] | None = None, **env: str) -> AsyncIterator[Stack]:
    """Server (with CLIENT_KEY and options) plus one ready relay."""
    options: dict[str, Any] = {"client_key": CLIENT_KEY}
    options.update(server_options or {})
    async with (
        running_server(**options) as server,
        relay_running(server, env) as (relay, task),
    ):
        yield Stack(server, relay, task)


async def answer_sampling(
    context: Any, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    """The client's 'LLM' for sampling requests: echoes the question's length."""
    first = params.messages[0].content
    text = first.text if isinstance(first, types.TextContent) else ""
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"answer to {text}"),
        model="test-llm",
    )


def mcp_client(
    url: str, *, token: str | None = API_KEY, mode: str = "legacy", **options: Any
) -> AbstractAsyncContextManager[Client]:
    """The official SDK client over streamable HTTP, with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    @asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30)) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode, **options) as client:
                yield client

    return connect()


@pytest.fixture
def make_stack() -> Callable[..., AbstractAsyncContextManager[Stack]]:
    """`async with make_stack(server_options, **relay_env) as s:`."""
    return stack


@pytest.fixture
def connect() -> Callable[..., AbstractAsyncContextManager[Client]]:
    """`async with connect(url, token=..., mode=...) as client:` (the SDK client)."""
    return mcp_client


@pytest.fixture
def start_relay() -> Callable[..., AbstractAsyncContextManager[tuple[McpRelay, asyncio.Task[int]]]]:
    """`async with start_relay(server, env, wait_ready=...) as (relay, task):`."""
    return relay_running


@pytest.fixture
def sampling() -> Any:
    """A sampling callback for the SDK client."""
    return answer_sampling


@pytest.fixture
def stdio_provider() -> dict[str, str]:
    """Relay env for the stdio form of the test provider."""
    return stdio_env()
