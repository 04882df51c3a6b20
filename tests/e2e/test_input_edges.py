"""Issue 9: input edge cases through a real connector and backend (query, headers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings
from support.server import RunningServer, running_server

API_KEY = "client-secret"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class EchoBackend:
    """Lists model `m`; answers chat calls with its own `x-request-id` and cache policy and
    records the raw request target it saw."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.targets.append(request.raw_path)
        body = await request.json()
        headers = {"x-request-id": "backend-id-7"}
        if body.get("stream"):
            headers |= {"Content-Type": "text/event-stream", "Cache-Control": "no-transform"}
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.json_response({"object": "chat.completion"}, headers=headers)


@asynccontextmanager
async def stack() -> AsyncIterator[tuple[RunningServer, EchoBackend]]:
    backend = EchoBackend()
    runner = web.AppRunner(backend.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with running_server(client_key="ck", api_key=API_KEY) as server:
            settings = WorkerSettings.model_validate(
                {
                    "server_url": server.ws_url,
                    "client_key": "ck",
                    "client_id": "w1",
                    "completion_base_url": backend_url,
                }
            )
            worker = Connector(settings)
            task = asyncio.create_task(worker.run())
            try:
                async with asyncio.timeout(10):
                    await server.wait_for(lambda: server.status("w1") not in (None, "gone"))
                yield server, backend
            finally:
                worker.request_stop()
                async with asyncio.timeout(10):
                    await task
    finally:
        await runner.cleanup()


async def test_query_string_reaches_the_backend_byte_for_byte() -> None:
    query = "x=%23frag&y=%00&z=a%2Bb+c&w=%E2%82%AC"
    async with stack() as (server, backend), aiohttp.ClientSession() as http:
        url = f"{server.url}/api/v1/chat/completions?{query}"
        async with asyncio.timeout(10):
            async with http.post(url, json={"model": "m"}, headers=AUTH) as resp:
                assert resp.status == 200, await resp.text()
        assert backend.targets == [f"/v1/chat/completions?{query}"]
        worker = server.worker("w1")
        assert worker is not None
        assert worker.failures_total == 0


async def test_backend_headers_come_back_as_they_are_with_infero_id_apart() -> None:
    async with stack() as (server, _), aiohttp.ClientSession() as http, asyncio.timeout(10):
        headers = AUTH | {"X-Request-Id": "client-id-1"}
        url = server.url + "/api/v1/chat/completions"
        async with http.post(url, json={"model": "m"}, headers=headers) as resp:
            assert resp.headers["X-Request-Id"] == "backend-id-7"
            assert resp.headers["X-Infero-Request-Id"] == "client-id-1"
        body = {"model": "m", "stream": True}
        async with http.post(url, json=body, headers=headers) as resp:
            assert await resp.read() == b"data: [DONE]\n\n"
            assert resp.headers["X-Request-Id"] == "backend-id-7"
            assert resp.headers["Cache-Control"] == "no-transform"
            assert resp.headers["X-Accel-Buffering"] == "no"
        async with http.get(server.url + "/healthz", headers={"X-Request-Id": "h-1"}) as resp:
            assert resp.headers["X-Request-Id"] == resp.headers["X-Infero-Request-Id"] == "h-1"
