"""A streaming client that stops reading loses its request after STALL_TIMEOUT (issue 9)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import pytest

from infero.protocol import link as lp
from infero.server import keys
from support.connector import Incoming, ScriptedConnector, scripted_connector
from support.server import running_server


async def endless_stream(conn: ScriptedConnector, incoming: Incoming) -> None:
    """SSE events for ever, within the flow-control window and the credit granted."""
    event = b"data: " + b"x" * 65536 + b"\n\n"
    sent = 0
    while True:
        if conn.welcome.window + incoming.credit - sent < len(event):
            incoming.credited.clear()
            await incoming.credited.wait()
            continue
        await conn.body(incoming.id, event)
        sent += len(event)


async def test_a_client_that_stops_reading_is_cancelled_and_frees_the_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        running_server(stall_timeout=0.3) as srv,
        scripted_connector(srv.url, max_concurrency=1) as conn,
    ):
        port = int(srv.url.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up quickly
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        body = b'{"model": "m", "stream": true}'
        writer.write(
            b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        async with asyncio.timeout(30):
            incoming = await conn.next_request()
            await conn.head(incoming.id, 200, [("Content-Type", "text/event-stream")])
            await reader.readuntil(b"\r\n\r\n")  # the head; then the client reads no more
            endless = asyncio.create_task(endless_stream(conn, incoming))
            await incoming.cancelled.wait()
            endless.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endless
            worker = srv.fleet.workers["w1"]
            assert worker.inflight == 1, "the slot is taken until the connector ended the call"
            await conn.end(incoming.id, error=lp.LinkError(code="cancelled"))
            await srv.wait_for(lambda: worker.inflight == 0)
        writer.close()
        snap = srv.app[keys.SNAPSHOT]()
        assert (snap.server.jobs_cancelled_total, snap.server.jobs_failed_total) == (1, 0)
        assert (worker.stats.failures_total, worker.stats.last_error) == (0, "")
        # The slot is free: the next request is dispatched at once.
        assert srv.embedded.scheduler.acquire_now("m", frozenset(), None) is worker
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
