"""Openers for stdio and legacy HTTP+SSE providers, behind the loopback facade.

Both use the official `mcp` SDK client transports, so framing, the SSE endpoint handshake
and child-process handling are the SDK's. Needs the `mcp` extra (`pip install infero[mcp]`).
A stdio child's stderr goes to the relay log line by line, prefixed with the child's number
and capped at `STDERR_LINE_MAX` characters per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2
from mcp.client._transport import TransportStreams
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client

from infero.relay.facade import Facade
from infero.relay.sessions import Opener
from infero.relay.settings import RelaySettings

logger = logging.getLogger(__name__)

STDERR_LINE_MAX = 2000
"""Characters of one stderr line of a stdio child that reach the relay log."""
STDERR_FLUSH = 2.0
"""Seconds to wait for a stopped child's last stderr lines."""
REAP_SLACK = 120.0
"""Seconds beyond MCP_SESSION_IDLE_TIMEOUT an SSE provider may stay silent (the idle reaper
runs every minute, so an idle session is closed before its stream would time out)."""


def stdio_opener(settings: RelaySettings, environ: Mapping[str, str]) -> Opener:
    """Each call starts one child process (`MCP_STDIO_*` settings)."""
    params = StdioServerParameters(
        command=settings.mcp_stdio_command,
        args=list(settings.mcp_stdio_args),
        env=settings.stdio_env(environ) or None,
        cwd=settings.mcp_stdio_workdir or None,
    )
    numbers = itertools.count(1)

    def open_child() -> AbstractAsyncContextManager[TransportStreams]:
        return _child(params, f"stdio child {next(numbers)}")

    return open_child


@asynccontextmanager
async def _child(params: StdioServerParameters, prefix: str) -> AsyncIterator[TransportStreams]:
    """`stdio_client` with the child's stderr read through a pipe into the relay log."""
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w", encoding="utf-8")
    pump = asyncio.create_task(_log_stderr(read_fd, prefix), name=f"{prefix} stderr")
    try:
        async with stdio_client(params, errlog=errlog) as streams:
            errlog.close()  # the child holds its own copy; EOF comes when it exits
            yield streams
    finally:
        errlog.close()
        try:
            async with asyncio.timeout(STDERR_FLUSH):
                await asyncio.shield(pump)
        except TimeoutError:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def _log_stderr(fd: int, prefix: str) -> None:
    """Log each line of `fd` until EOF, at most `STDERR_LINE_MAX` characters of each."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    line = _Line(prefix)
    try:
        while chunk := await reader.read(64 * 1024):
            *complete, rest = chunk.split(b"\n")
            for part in complete:
                line.add(part)
                line.emit()
            line.add(rest)
        line.emit()
    finally:
        transport.close()


class _Line:
    """One stderr line being collected: its first `STDERR_LINE_MAX` bytes and the rest counted."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.kept = bytearray()
        self.dropped = 0

    def add(self, part: bytes) -> None:
        room = max(0, STDERR_LINE_MAX - len(self.kept))
        self.kept += part[:room]
        self.dropped += max(0, len(part) - room)

    def emit(self) -> None:
        if self.kept or self.dropped:
            text = self.kept.decode("utf-8", errors="replace").rstrip("\r")
            more = f" [... {self.dropped} more bytes]" if self.dropped else ""
            logger.info("%s: %s%s", self.prefix, text, more)
        self.kept.clear()
        self.dropped = 0


def sse_opener(settings: RelaySettings) -> Opener:
    """Each call opens one SSE connection to `MCP_SSE_URL`.

    Provider silence on the event stream is normal (an idle session): the stream may stay
    quiet as long as the session may stay idle; MCP_HTTP_TIMEOUT bounds the other requests.
    """
    verify = not settings.mcp_http_insecure_skip_verify
    timeout = settings.mcp_http_timeout
    quiet = settings.mcp_session_idle_timeout + REAP_SLACK

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
            sse_read_timeout=quiet,
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
