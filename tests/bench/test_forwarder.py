"""The benchmark's byte forwarder (`bench.forwarder`): both ways, half-close, backpressure.

The forwarder runs in the test's own loop in front of a real loopback server, so the test can
see whether it reads.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from bench.forwarder import Forwarder

ROOT = Path(__file__).resolve().parents[2]

WAIT = 10.0
"""Seconds any step may take on a loaded machine."""
BIG = 32 * 1024 * 1024
"""More than the kernel's loopback socket buffers hold, so the forwarder's own buffer fills."""

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def fwd(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`bench.forwarder`: bench/ is a folder of the checkout, not an installed package."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("bench.forwarder")


@asynccontextmanager
async def forwarding(
    fwd: ModuleType, handler: Handler
) -> AsyncIterator[tuple[Forwarder, int, int]]:
    """A server running `handler` and a forwarder in front of it: (forwarder, its port, the
    server's port)."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[1]
    forwarder: Forwarder = fwd.Forwarder(target)
    front = await asyncio.get_running_loop().create_server(forwarder.accept, "127.0.0.1", 0)
    try:
        yield forwarder, front.sockets[0].getsockname()[1], target
    finally:
        front.close()
        forwarder.close()
        server.close()
        await front.wait_closed()
        await server.wait_closed()


async def test_bytes_cross_both_ways_and_each_side_may_close_its_half_first(
    fwd: ModuleType,
) -> None:
    """The client sends and half-closes; the server reads to the end, answers and closes."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # to the client's end of stream, passed on by the forwarder
        writer.write(data[::-1])
        writer.close()

    async with forwarding(fwd, echo) as (_, port, _):
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"floor of the hop")
            writer.write_eof()
            assert await reader.read() == b"poh eht fo roolf"
            writer.close()
            await writer.wait_closed()


async def test_a_client_not_reading_stops_the_forwarder_reading_the_server(
    fwd: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the client does not read, the forwarder's buffer toward it fills and it stops
    reading from the server; once the client reads, every byte arrives in order."""
    payload = bytes(range(256)) * (BIG // 256)
    full = asyncio.Event()
    pause_writing = fwd.Pipe.pause_writing

    def pause_and_tell(pipe: Any) -> None:
        pause_writing(pipe)
        full.set()

    monkeypatch.setattr(fwd.Pipe, "pause_writing", pause_and_tell)

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    async with forwarding(fwd, send) as (forwarder, port, target):
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await full.wait()
            (upstream,) = (
                p.transport
                for p in forwarder.pipes
                if p.transport is not None and p.transport.get_extra_info("peername")[1] == target
            )
            assert not upstream.is_reading()
            assert await reader.read() == payload
            writer.close()
            await writer.wait_closed()


async def test_a_client_whose_target_refuses_is_closed(fwd: ModuleType) -> None:
    """No server at the target port: the accepted connection ends without a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, not listening: connections are refused
        forwarder: Forwarder = fwd.Forwarder(closed_port)
        front = await asyncio.get_running_loop().create_server(forwarder.accept, "127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", front.sockets[0].getsockname()[1]
                )
                assert await reader.read() == b""
                writer.close()
                await writer.wait_closed()
        finally:
            front.close()
            forwarder.close()
            await front.wait_closed()


async def test_bytes_read_before_the_upstream_end_connects_are_passed_on(
    fwd: ModuleType,
) -> None:
    """uvloop may hand the accepted end bytes from before its pause took effect: they wait
    for the upstream end instead of being dropped (the server then waited for a request)."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.put_nowait(await reader.readexactly(5))
        writer.close()

    async with forwarding(fwd, keep) as (forwarder, port, _):
        connect = forwarder.connect
        accepted: asyncio.Queue[Any] = asyncio.Queue()
        forwarder.connect = accepted.put_nowait  # type: ignore[method-assign,assignment]  # hold the dial
        async with asyncio.timeout(WAIT):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            client = await accepted.get()
            client.data_received(b"early")  # as uvloop may, before the upstream end exists
            connect(client)
            assert await received.get() == b"early"
            writer.close()
            await writer.wait_closed()
