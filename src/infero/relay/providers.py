"""Openers for stdio and legacy HTTP+SSE providers, behind the loopback facade.

Both use the official `mcp` SDK client transports, so framing, the SSE endpoint handshake
and child-process handling are the SDK's. Needs the `mcp` extra (`pip install infero[mcp]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx2
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client

from infero.relay.facade import Facade, Opener
from infero.relay.settings import RelaySettings


def stdio_opener(settings: RelaySettings, environ: Mapping[str, str]) -> Opener:
    """Each call starts one child process (`MCP_STDIO_*` settings)."""
    params = StdioServerParameters(
        command=settings.mcp_stdio_command,
        args=list(settings.mcp_stdio_args),
        env=settings.stdio_env(environ) or None,
        cwd=settings.mcp_stdio_workdir or None,
    )

    def open_child() -> AbstractAsyncContextManager[TransportStreams]:
        return stdio_client(params)

    return open_child


def sse_opener(settings: RelaySettings) -> Opener:
    """Each call opens one SSE connection to `MCP_SSE_URL`."""
    verify = not settings.mcp_http_insecure_skip_verify
    timeout = settings.mcp_http_timeout

    def client_factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        options: dict[str, Any] = {"headers": headers, "auth": auth, "verify": verify}
        if timeout is not None:
            options["timeout"] = timeout
        return httpx2.AsyncClient(**options)

    def open_stream() -> AbstractAsyncContextManager[TransportStreams]:
        return sse_client(
            settings.mcp_sse_url,
            timeout=min(timeout, 30.0),
            sse_read_timeout=timeout,
            httpx_client_factory=client_factory,
        )

    return open_stream


async def open_facade(settings: RelaySettings, environ: Mapping[str, str]) -> Facade:
    """Start the loopback facade for the configured stdio or SSE provider."""
    transport = settings.transport()
    opener = stdio_opener(settings, environ) if transport == "stdio" else sse_opener(settings)
    facade = Facade(
        opener,
        max_sessions=settings.mcp_max_sessions,
        idle_timeout=settings.mcp_session_idle_timeout,
        label=f"{transport} provider",
    )
    await facade.start()
    return facade
