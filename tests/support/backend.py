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
