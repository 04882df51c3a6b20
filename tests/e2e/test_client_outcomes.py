"""Issue 9: numbers operators can believe.

SDK clients that leave right after `[DONE]` are successes; clients that disconnect mid-answer
are cancels, never connector failures; no client disconnect logs an ERROR or a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from infero.demo.backend import DemoConfig, create_app
from infero.protocol.state import StateSnapshot
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.server import RunningServer, running_server

API_KEY = "client-secret"
TOKEN = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"demo",'
    b'"choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}\n\n'
)


class HoldingBackend:
    """Demo backend whose streams send tokens 10 ms apart, then `[DONE]`, then hold the
    connection open (as a slow backend may) until the call is aborted."""

    def __init__(self) -> None:
        self.url = ""
        self.aborted = 0
        self.streams_started = 0

    def app(self) -> web.Application:
        app = create_app(DemoConfig(models=("demo",)))

        @web.middleware
        async def hold(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != "/v1/chat/completions":
                return await handler(request)
            self.streams_started += 1
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                for _ in range(5):
                    await response.write(TOKEN)
                    await asyncio.sleep(0.01)  # the backend's token pace, not a test wait
                await response.write(b"data: [DONE]\n\n")
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.aborted += 1
                raise
            return response

        app.middlewares.append(hold)
        return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def connector(server: RunningServer, backend_url: str) -> AsyncIterator[Connector]:
    settings = WorkerSettings.model_validate(
        {
            "server_url": server.ws_url,
            "client_key": "ck",
            "client_id": "w1",
            "completion_base_url": backend_url,
            "max_concurrency": 4,
        }
    )
    worker = Connector(settings)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await worker.connected.wait()
            await server.wait_for(lambda: server.status("w1") not in (None, "gone"))
        yield worker
    finally:
        worker.request_stop()
        async with asyncio.timeout(10):
            await task


async def metrics_text(server: RunningServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as resp:
        return await resp.text()


def sample(text: str, series: str) -> float:
    """The value of one exact series in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


async def state(server: RunningServer) -> StateSnapshot:
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + "/api/state", headers={"Authorization": f"Bearer {API_KEY}"}) as r,
    ):
        return StateSnapshot.model_validate(await r.json())


def streamed_calls(url: str, count: int) -> int:
    """`count` streamed chats with the sync SDK, read to `[DONE]`; how many had text."""
    client = openai.OpenAI(base_url=url + "/api/v1", api_key=API_KEY, max_retries=0)
    done = 0
    with client:
        for _ in range(count):
            stream = client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            done += bool(text)
    return done


@pytest.mark.parametrize("backend", ["holds-after-done", "demo-10ms"])
async def test_sdk_streams_closed_after_done_all_count_as_success(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """4 threads x 10 streamed SDK calls: 40 successes, 0 failed anywhere, no ERROR log."""
    caplog.set_level(logging.INFO)
    app = (
        HoldingBackend().app()
        if backend == "holds-after-done"
        else create_app(DemoConfig(models=("demo",), token_delay=0.01))
    )
    async with (
        serving(app) as backend_url,
        running_server(client_key="ck", api_key=API_KEY) as server,
        connector(server, backend_url),
    ):
        async with asyncio.timeout(60):
            results = await asyncio.gather(
                *(asyncio.to_thread(streamed_calls, server.url, 10) for _ in range(4))
            )
            assert sum(results) == 40
            await server.wait_for(lambda: getattr(server.worker("w1"), "inflight", -1) == 0)
        info = (await state(server)).server
        assert (info.jobs_completed_total, info.jobs_failed_total) == (40, 0)
        assert info.jobs_cancelled_total == 0
        text = await metrics_text(server)
        assert sample(text, 'infero_model_requests_total{model="demo",outcome="success"}') == 40
        assert sample(text, 'infero_model_requests_total{model="demo",outcome="error"}') == 0
        worker = server.worker("w1")
        assert worker is not None
        assert (worker.failures_total, worker.last_error) == (0, "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not [r for r in caplog.records if r.exc_info]


async def test_client_disconnect_mid_stream_is_a_cancel_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that leaves mid-answer: `cancelled` in state and metrics, the connector's
    failures and the model's errors untouched, no ERROR log."""
    caplog.set_level(logging.INFO)
    holding = HoldingBackend()
    async with (
        serving(holding.app()) as backend_url,
        running_server(client_key="ck", api_key=API_KEY) as server,
        connector(server, backend_url),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(10):
            resp = await http.post(
                server.url + "/api/v1/chat/completions",
                json={"model": "demo", "stream": True, "messages": []},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert await resp.content.readuntil(b"\n\n") == TOKEN
            resp.close()
            await server.wait_for(lambda: getattr(server.worker("w1"), "inflight", -1) == 0)
        worker = server.worker("w1")
        assert worker is not None
        assert (worker.failures_total, worker.last_error) == (0, "")
        snap = await state(server)
        assert (snap.server.jobs_failed_total, snap.server.jobs_cancelled_total) == (0, 1)
        assert (snap.models[0].error_total, snap.models[0].cancelled_total) == (0, 1)
        (row,) = snap.workers
        assert (row.failures_total, row.cancelled_total, row.last_error) == (0, 1, "")
        assert row.per_model["demo"].cancelled_total == 1
        text = await metrics_text(server)
        assert sample(text, 'infero_model_requests_total{model="demo",outcome="cancelled"}') == 1
        assert sample(text, 'infero_model_requests_total{model="demo",outcome="error"}') == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class EndlessBackend:
    """Demo backend whose streams send large events until the call is aborted."""

    def __init__(self) -> None:
        self.aborted = asyncio.Event()

    def app(self) -> web.Application:
        app = create_app(DemoConfig(models=("demo",)))
        event = TOKEN.replace(b"tok ", b"x" * 65536)

        @web.middleware
        async def endless(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != "/v1/chat/completions":
                return await handler(request)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            try:
                while True:
                    await response.write(event)
            except asyncio.CancelledError:
                self.aborted.set()
                raise

        app.middlewares.append(endless)
        return app


async def test_a_stream_nobody_reads_is_cancelled_on_the_connector_after_the_stall_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client takes the first event and then reads no more (aiohttp stops reading its
    socket once its buffer is full): after STALL_TIMEOUT the backend call is aborted on the
    connector, the slot is free and the outcome is a client cancel."""
    caplog.set_level(logging.INFO)
    backend = EndlessBackend()
    async with (
        serving(backend.app()) as backend_url,
        running_server(client_key="ck", api_key=API_KEY, stall_timeout=0.5) as server,
        connector(server, backend_url),
        aiohttp.ClientSession() as http,
    ):
        async with asyncio.timeout(60):
            resp = await http.post(
                server.url + "/api/v1/chat/completions",
                json={"model": "demo", "stream": True, "messages": []},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
            await backend.aborted.wait()  # the client never reads again
            worker = server.fleet.workers["w1"]
            await server.wait_for(lambda: worker.inflight == 0)
        resp.close()
        info = (await state(server)).server
        assert (info.jobs_cancelled_total, info.jobs_failed_total) == (1, 0)
        assert (worker.stats.failures_total, worker.stats.last_error) == (0, "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
