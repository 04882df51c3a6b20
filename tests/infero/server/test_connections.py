"""Connections a client holds without progress are closed; malformed requests log quietly
(issue 9)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infero.server import metrics
from infero.server.connections import _GuardedHandler, _GuardedServer
from support.connector import scripted_connector
from support.server import RunningServer, running_server


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def port_of(srv: RunningServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


async def fds_back_to(baseline: int) -> int:
    """Poll (bounded) until this process has at most `baseline` descriptors open again."""
    for _ in range(500):
        if open_fds() <= baseline:
            break
        await asyncio.sleep(0.01)
    return open_fds()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection."""
    return await reader.read()


async def test_silent_and_half_head_sockets_are_closed_and_fds_return_to_baseline() -> None:
    async with running_server(header_timeout=2) as srv:
        baseline = open_fds()
        conns = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port_of(srv)) for _ in range(100))
        )
        for _, writer in conns[50:]:
            writer.write(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-")
        assert open_fds() >= baseline + 200  # both ends of every connection are open
        async with asyncio.timeout(10):
            answers = await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
        assert answers == [b""] * 100
        for _, writer in conns:
            writer.close()
        assert await fds_back_to(baseline) <= baseline


async def test_idle_keepalive_connection_is_closed_but_a_long_request_is_not() -> None:
    async with (
        running_server(header_timeout=0.2, keepalive_timeout=0.3) as srv,
        scripted_connector(srv.url) as conn,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
        body = b'{"model": "m"}'
        writer.write(
            b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        async with asyncio.timeout(10):
            incoming = await conn.next_request()
            # The answer takes longer than HEADER_TIMEOUT: the connection must stay.
            await conn.head(incoming.id, 200, [("Content-Type", "application/json")])
            await conn.body(incoming.id, b"{}")
            await conn.end(incoming.id)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            # Then idle on keep-alive: closed after KEEPALIVE_TIMEOUT.
            rest = await closed_by_server(reader)
        assert rest.endswith(b"{}\r\n0\r\n\r\n") or rest.endswith(b"{}")
        writer.close()


async def test_the_metrics_listener_closes_silent_sockets_too() -> None:
    async with running_server(header_timeout=0.3, port=8080, metrics_port=0) as srv:
        port = srv.app[metrics.METRICS_LISTENER].port
        assert port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            assert await closed_by_server(reader) == b""
        writer.close()


async def test_malformed_requests_log_one_warning_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server() as srv:
        for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",) * 5:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(srv))
            writer.write(garbage)
            async with asyncio.timeout(10):
                answer = await closed_by_server(reader)
            writer.close()
            assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        async with aiohttp.ClientSession() as http, http.get(srv.url + "/healthz") as resp:
            assert resp.status == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    lines = [r.getMessage().split(":")[0] for r in warnings]
    assert lines == ["malformed HTTP request from 127.0.0.1"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


class _Watched(_GuardedServer):
    """The guarded server, telling when a connection was made."""

    made: asyncio.Event

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.made.set()


async def test_body_bytes_arriving_before_the_handler_starts_arm_no_header_timer() -> None:
    async def ok(_: web.BaseRequest) -> web.Response:
        return web.Response(text="ok")

    server = _Watched(ok)
    server.header_timeout = 0.2
    server.made = asyncio.Event()
    listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            await server.made.wait()
        handler = server.connections[0]
        assert isinstance(handler, _GuardedHandler)
        body = b'{"model": "m"}'
        # Head and body in two reads before the request task ran (as on a loaded machine).
        handler.data_received(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        handler.data_received(body)
        assert handler._head_timer is None  # the request is complete: no head is pending
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert handler._head_timer is None  # idle on keep-alive: KEEPALIVE_TIMEOUT governs
    finally:
        writer.close()
        listener.close()
        await server.shutdown(1.0)
