"""A backend that cannot run two requests at once, like llama-cpp-python's server.

When a request arrives while another is generating, the running one is cut short: its
stream ends at once with `data: [DONE]` (a 200 and a clean end, only shorter), as
llama-cpp-python's `interrupt_requests` does. Each stream sends its first token, then holds
until `release` is set (or it is interrupted), then sends the rest: `TOKENS` joined is the
whole answer.

What it says about itself depends on `advertises`: `props` answers llama.cpp's
`GET /props` with `total_slots` (`slots`), `openapi` serves llama-cpp-python's
`/openapi.json` title, `nothing` says nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, Literal

from aiohttp import web

TOKENS = tuple(f"t{n} " for n in range(8))
WHOLE = "".join(TOKENS)

Advertises = Literal["props", "openapi", "nothing"]


class SerialBackend:
    """One generation at a time; a newcomer interrupts the running one."""

    def __init__(self, advertises: Advertises, slots: int = 1) -> None:
        self.advertises = advertises
        self.slots = slots
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.started = 0
        """Generations started so far."""
        self.running = 0
        self.most_running = 0
        self.interrupted = 0
        self._interrupt: asyncio.Event | None = None
        self.url = ""
        """`http://127.0.0.1:<port>/v1` once serving."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        if self.advertises == "props":
            app.router.add_get("/props", self._props)
        if self.advertises == "openapi":
            app.router.add_get("/openapi.json", self._openapi)
        return app

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m", "object": "model", "owned_by": "me"}]})

    async def _props(self, _: web.Request) -> web.Response:
        return web.json_response({"total_slots": self.slots, "model_alias": "m"})

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response({"openapi": "3.1.0", "info": {"title": "🦙 llama.cpp Python API"}})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self._interrupt is not None:
            self._interrupt.set()
        interrupt = self._interrupt = asyncio.Event()
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        async with self.arrived:
            self.started += 1
            self.arrived.notify_all()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n, token in enumerate(TOKENS):
                if n == 1:
                    await _first_of(self.release.wait(), interrupt.wait())
                if interrupt.is_set():
                    self.interrupted += 1
                    break
                chunk = {"choices": [{"index": 0, "delta": {"content": token}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            self.running -= 1
            if self._interrupt is interrupt:
                self._interrupt = None
        return response


async def _first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
