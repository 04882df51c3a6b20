"""A controllable fake OpenAI backend: the demo backend plus scripted models.

Model `fixed` streams `FIXED_EVENTS` byte for byte; model `held` streams one event and then
waits until `release` is set, recording whether the call was aborted (`cancelled`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from infero.demo.backend import DemoConfig, create_app

FIXED_EVENTS = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"fixed",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"fixed",'
    b'"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
)
HELD_FIRST = (
    b'data: {"id":"h1","object":"chat.completion.chunk","created":1,"model":"held",'
    b'"choices":[{"index":0,"delta":{"content":"wait"},"finish_reason":null}]}\n\n'
)


class ControlledBackend:
    """Demo models plus `fixed` and `held`."""

    def __init__(self, models: tuple[str, ...] = ("demo",)) -> None:
        self.models = (*models, "fixed", "held")
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.url = ""
        """`http://127.0.0.1:<port>/v1` once serving."""

    def app(self) -> web.Application:
        app = create_app(DemoConfig(models=self.models))

        @web.middleware
        async def scripted(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != "/v1/chat/completions":
                return await handler(request)
            model = json.loads(await request.read()).get("model")
            if model == "fixed":
                return await self._stream(request, FIXED_EVENTS)
            if model == "held":
                return await self._held(request)
            return await handler(request)

        app.middlewares.append(scripted)
        return app

    async def _stream(self, request: web.Request, events: tuple[bytes, ...]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def _held(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(HELD_FIRST)
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class Servable(Protocol):
    """A fake backend: its aiohttp app, and the `/v1` URL it is served at."""

    url: str

    def app(self) -> web.Application: ...


B = TypeVar("B", bound=Servable)


@asynccontextmanager
async def serving(backend: B) -> AsyncIterator[B]:
    """Serve the backend on loopback (handler cancellation on, so aborts are seen)."""
    runner = web.AppRunner(backend.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    backend.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield backend
    finally:
        await runner.cleanup()


LINGER = 0.2
"""Seconds `LingeringBackend` keeps an answer open after `[DONE]`: longer than the openai SDK
waits for the end of a stream after `[DONE]` (0.1 s) before it closes the connection."""

LINGER_CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m1",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


class LingeringBackend:
    """Model `m1` streams one chunk and `[DONE]`, then keeps the answer open `LINGER` s (as
    llama.cpp may), so the client leaves before the connector ends the call. Counts the calls
    running at once: a backend with one slot would refuse or cut a second one."""

    def __init__(self) -> None:
        self.url = ""
        self.running = 0
        self.most = 0
        """The most calls that ran at once."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._lingering)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m1"}]})

    async def _lingering(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(LINGER_CHUNK)
            await asyncio.sleep(LINGER)  # the backend's own behaviour, not a wait of a test
            await response.write_eof()
            return response
        finally:
            self.running -= 1
