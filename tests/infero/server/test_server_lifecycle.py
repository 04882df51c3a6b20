"""Server lifecycle: health probes, draining on a signal, exit once idle."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import aiohttp

from infero.server import keys
from infero.server.runner import drain_then_stop
from support.connector import scripted_connector
from support.server import running_server

CHAT = "/api/v1/chat/completions"


async def test_healthz_is_always_ok_and_readyz_needs_a_ready_connector() -> None:
    async with running_server() as srv, aiohttp.ClientSession() as http:
        async with http.get(srv.url + "/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
        async with http.get(srv.url + "/readyz") as resp:
            assert resp.status == 503
        async with scripted_connector(srv.url):
            async with http.get(srv.url + "/readyz") as resp:
                assert resp.status == 200
            srv.app[keys.LIFECYCLE].start_drain()
            async with http.get(srv.url + "/readyz") as resp:
                assert resp.status == 503
                assert await resp.json() == {"status": "draining"}
            async with http.get(srv.url + "/healthz") as resp:
                assert resp.status == 200


async def test_drain_waits_for_in_flight_work_and_refuses_new_requests() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            drained = asyncio.create_task(drain_then_stop(srv.app, 60, asyncio.Event()))
            await srv.wait_for(lambda: srv.app[keys.LIFECYCLE].draining)
            async with http.post(srv.url + CHAT, json={"model": "m"}) as resp:
                assert resp.status == 503
                assert (await resp.json())["error"]["code"] == "server_draining"
            assert not drained.done()
            await conn.reply(incoming.id, b"{}")
            assert (await call).status == 200
            await drained


async def test_drain_timeout_zero_stops_at_once_and_a_second_signal_cuts_the_wait() -> None:
    async with (
        running_server() as srv,
        scripted_connector(srv.url) as conn,
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(5):
            call = asyncio.create_task(http.post(srv.url + CHAT, json={"model": "m"}))
            incoming = await conn.next_request()
            await drain_then_stop(srv.app, 0, asyncio.Event())
            second = asyncio.Event()
            waiting = asyncio.create_task(drain_then_stop(srv.app, -1, second))
            await asyncio.sleep(0)  # let the drain start waiting
            assert not waiting.done()
            second.set()
            await waiting
            await conn.reply(incoming.id, b"{}")
            (await call).release()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_infero_server_process_exits_zero_on_sigterm_when_idle() -> None:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import main; main()",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(10):
            while True:
                line = await proc.stderr.readline()
                assert line, "server exited before listening"
                if b"listening on" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
