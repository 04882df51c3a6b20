"""Test doubles for the connector: a scripted link server and a controllable backend."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from infero.protocol import link
from infero.worker.runtime import Connector
from infero.worker.settings import WorkerSettings

CHAT = json.dumps({"model": "m1", "stream": True}).encode()


class FakeLinkServer:
    """An aiohttp WebSocket endpoint speaking the link protocol, driven by the test."""

    def __init__(
        self,
        *,
        refuse: link.Refused | None = None,
        window: int = link.DEFAULT_WINDOW,
        heartbeat_interval: float = 5.0,
        dead_after: float = 15.0,
        answer_pings: bool = True,
        silent: bool = False,
    ) -> None:
        self.refuse = refuse
        self.window = window
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.answer_pings = answer_pings
        self.silent = silent
        self.hellos: asyncio.Queue[link.Hello] = asyncio.Queue()
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.bodies: dict[int, bytearray] = defaultdict(bytearray)
        self.body_arrived = asyncio.Event()
        self.ws: web.WebSocketResponse | None = None
        self.closed = asyncio.Event()
        self.connections = 0
        self.upgrades = 0
        """Upgrade requests received, answered or not."""
        self.dialed = asyncio.Event()
        """Set at every upgrade request."""
        self.refuse_upgrades = 0
        """Non-zero: answer upgrades with this HTTP status (a server that cannot link now)."""
        self.hold_upgrades: asyncio.Event | None = None
        """When set, an upgrade is answered only once this event is (a slow dial)."""
        self.answered = asyncio.Event()
        """Set once an upgrade's handler returned (or failed)."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/workers/connect", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.upgrades += 1
        self.dialed.set()
        try:
            return await self._link(request)
        finally:
            self.answered.set()

    async def _link(self, request: web.Request) -> web.StreamResponse:
        if self.hold_upgrades is not None:
            await self.hold_upgrades.wait()
        if self.refuse_upgrades:
            return web.Response(status=self.refuse_upgrades)
        ws = web.WebSocketResponse(max_msg_size=link.MAX_FRAME, autoping=False)
        await ws.prepare(request)
        self.connections += 1
        self.closed.clear()
        first = await ws.receive()
        hello = link.CONNECTOR_FRAMES.validate_json(first.data)
        assert isinstance(hello, link.Hello)
        await self.hellos.put(hello)
        if self.silent:
            async for _ in ws:
                pass
            self.closed.set()
            return ws
        if self.refuse is not None:
            await ws.send_str(link.encode(self.refuse))
            await ws.close()
            self.closed.set()
            return ws
        await ws.send_str(
            link.encode(
                link.Welcome(
                    id=hello.id,
                    window=self.window,
                    heartbeat_interval=self.heartbeat_interval,
                    dead_after=self.dead_after,
                )
            )
        )
        self.ws = ws
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                _, sid, payload = link.unpack_body(msg.data)
                self.bodies[sid] += payload
                self.body_arrived.set()
                continue
            frame = link.CONNECTOR_FRAMES.validate_json(msg.data)
            if isinstance(frame, link.Ping) and self.answer_pings:
                await ws.send_str(link.encode(link.Pong(ts=frame.ts)))
                continue
            await self.frames.put(frame)
        self.ws = None
        self.closed.set()
        return ws

    async def send(self, frame: Any) -> None:
        assert self.ws is not None
        await self.ws.send_str(link.encode(frame))

    async def request(
        self, sid: int, path: str, body: bytes = b"", *, method: str = "POST", **kw: Any
    ) -> None:
        """Send a Request and its body frames."""
        await self.send(link.Request(id=sid, method=method, path=path, body_len=len(body), **kw))
        assert self.ws is not None
        for i in range(0, len(body), link.BODY_CHUNK):
            await self.ws.send_bytes(
                link.pack_body(link.REQUEST_BODY, sid, body[i : i + link.BODY_CHUNK])
            )

    async def next_frame(self, *types: type[Any]) -> Any:
        """The next frame of one of `types` (others, e.g. pings, are skipped)."""
        while True:
            frame = await self.frames.get()
            if not types or isinstance(frame, types):
                return frame

    async def wait_body(self, sid: int, size: int) -> bytes:
        while len(self.bodies[sid]) < size:
            self.body_arrived.clear()
            await self.body_arrived.wait()
        return bytes(self.bodies[sid])


@dataclass
class FakeBackend:
    """OpenAI + Ollama speaking backend that can fail, hold answers and see cancellations."""

    models: list[str] = field(default_factory=lambda: ["m1"])
    ollama_only: bool = False
    down: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    hold: bool = False
    seen: list[web.Request] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    answer: bytes = b""
    discovery_auth: list[str] = field(default_factory=list)
    broken: bytes = b""
    """When set, a chat answer streams these bytes and the backend then drops the connection
    (a backend dying mid-answer)."""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/big", self._big)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        self.discovery_auth.append(request.headers.get("Authorization", ""))
        if self.down or self.ollama_only:
            return web.Response(status=503 if self.down else 404)
        return web.json_response({"data": [{"id": m} for m in self.models]})

    async def _tags(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503)
        return web.json_response({"models": [{"name": m} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        self.bodies.append(await request.read())
        body = json.loads(self.bodies[-1])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Backend": "1"})
        resp.set_cookie("session", "client-a")
        await resp.prepare(request)
        if self.broken:
            await resp.write(self.broken)
            assert request.transport is not None
            request.transport.close()  # the bytes written leave first, the end never
            return resp
        await resp.write(b'data: {"n":1}\n\n')
        self.entered.set()
        try:
            if self.hold or body.get("hold"):
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await resp.write(
            b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
        )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _big(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.bodies.append(data)
        return web.Response(body=self.answer or data, content_type="application/octet-stream")


ServerFactory = Callable[..., Awaitable[TestServer]]


class Stack:
    """Fake link server + fake backend + a real Connector, on loopback."""

    def __init__(self, aiohttp_server: ServerFactory) -> None:
        self._factory = aiohttp_server
        self.server = FakeLinkServer()
        self.backend = FakeBackend()
        self.connector: Connector | None = None
        self.task: asyncio.Task[int] | None = None
        self.server_port = 0
        self.backend_url = ""

    async def start(
        self,
        *,
        connector_args: dict[str, Any] | None = None,
        runner: Callable[[Connector], Coroutine[Any, Any, int]] = Connector.run,
        base_path: str = "/v1",
        backend_host: str = "127.0.0.1",
        **settings: Any,
    ) -> Connector:
        ts = await self._factory(self.server.app())
        bs = await self._factory(self.backend.app())
        self.server_port = ts.port or 0
        self.backend_url = f"http://{backend_host}:{bs.port}{base_path}"
        values: dict[str, Any] = {
            "server_url": f"ws://127.0.0.1:{ts.port}/api/workers/connect",
            "completion_base_url": self.backend_url,
            "client_key": "ck",
            "client_id": "w1",
            "client_name": "alpha",
            **settings,
        }
        self.connector = Connector(WorkerSettings.model_validate(values), **(connector_args or {}))
        self.task = asyncio.create_task(runner(self.connector))
        return self.connector

    async def connected(self) -> link.Hello:
        async with asyncio.timeout(5):
            hello = await self.server.hellos.get()
            assert self.connector is not None
            await self.connector.connected.wait()
        return hello

    async def close(self) -> None:
        """Stop the connector (if started) and wait for it."""
        if self.connector is not None and self.task is not None:
            self.connector.request_stop()
            async with asyncio.timeout(5):
                await self.task

    async def exit_code(self) -> int:
        assert self.task is not None
        async with asyncio.timeout(5):
            return await self.task
