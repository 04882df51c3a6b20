"""A scripted connector: speaks the link protocol, and the test decides every answer. And a
real `infero llm` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from infero.protocol import link as lp


@dataclass
class Incoming:
    """One Request the server sent, with its assembled body."""

    frame: lp.Request
    body: bytes = b""
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    credit: int = 0
    """Credit granted for this stream so far (beyond the initial window)."""
    credited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> int:
        return self.frame.id


class ScriptedConnector:
    """The connector side of one link, driven by the test."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, answer: lp.Welcome | lp.Refused):
        self.ws = ws
        self.answer = answer
        self.requests: asyncio.Queue[Incoming] = asyncio.Queue()
        self.streams: dict[int, Incoming] = {}
        self.controls: asyncio.Queue[lp.Control] = asyncio.Queue()
        self.pings = 0
        self.answer_pings = True
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def welcome(self) -> lp.Welcome:
        assert isinstance(self.answer, lp.Welcome), self.answer
        return self.answer

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    _, sid, payload = lp.unpack_body(msg.data)
                    incoming = self.streams[sid]
                    incoming.body += bytes(payload)
                    if len(incoming.body) >= incoming.frame.body_len:
                        incoming.complete.set()
                        await self.requests.put(incoming)
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = lp.SERVER_FRAMES.validate_json(msg.data)
                if isinstance(frame, lp.Request):
                    incoming = Incoming(frame)
                    self.streams[frame.id] = incoming
                    if frame.body_len == 0:
                        incoming.complete.set()
                        await self.requests.put(incoming)
                elif isinstance(frame, lp.Cancel):
                    if frame.id in self.streams:
                        self.streams[frame.id].cancelled.set()
                elif isinstance(frame, lp.Credit):
                    if frame.id in self.streams:
                        self.streams[frame.id].credit += frame.bytes
                        self.streams[frame.id].credited.set()
                elif isinstance(frame, lp.Ping):
                    self.pings += 1
                    if self.answer_pings:
                        await self.ws.send_str(lp.encode(lp.Pong(ts=frame.ts)))
                elif isinstance(frame, lp.Control):
                    await self.controls.put(frame)
        finally:
            self.closed.set()

    async def next_request(self) -> Incoming:
        """The next complete request (bound the wait with asyncio.timeout in the test)."""
        return await self.requests.get()

    async def head(self, sid: int, status: int = 200, headers: lp.Headers | None = None) -> None:
        await self.ws.send_str(lp.encode(lp.Head(id=sid, status=status, headers=headers or [])))

    async def body(self, sid: int, data: bytes) -> None:
        for start in range(0, len(data), lp.BODY_CHUNK):
            await self.ws.send_bytes(
                lp.pack_body(lp.RESPONSE_BODY, sid, data[start : start + lp.BODY_CHUNK])
            )

    async def body_with_credit(self, sid: int, data: bytes) -> None:
        """Send `data` honouring the window and the server's Credit frames."""
        incoming = self.streams[sid]
        sent = 0
        while sent < len(data):
            allowed = self.welcome.window + incoming.credit - sent
            if allowed <= 0:
                incoming.credited.clear()
                await incoming.credited.wait()
                continue
            size = min(allowed, lp.BODY_CHUNK, len(data) - sent)
            await self.ws.send_bytes(lp.pack_body(lp.RESPONSE_BODY, sid, data[sent : sent + size]))
            sent += size

    async def end(
        self, sid: int, *, error: lp.LinkError | None = None, usage: lp.Usage | None = None
    ) -> None:
        await self.ws.send_str(lp.encode(lp.End(id=sid, error=error, usage=usage)))

    async def reply(
        self,
        sid: int,
        data: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        usage: lp.Usage | None = None,
    ) -> None:
        """Head + body + End in one go."""
        await self.head(sid, status, [("Content-Type", content_type)])
        if data:
            await self.body(sid, data)
        await self.end(sid, usage=usage)

    async def status(self, **fields: Any) -> None:
        await self.ws.send_str(lp.encode(lp.StatusUpdate(**fields)))

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@asynccontextmanager
async def scripted_connector(
    url: str,
    *,
    path: str = "/api/workers/connect",
    session: aiohttp.ClientSession | None = None,
    **hello: Any,
) -> AsyncIterator[ScriptedConnector]:
    """Dial the server at `url` (http://...), send a Hello, wait for its answer."""
    fields: dict[str, Any] = {"id": "w1", "name": "W1", "models": ["m"], "max_concurrency": 1}
    fields.update(hello)
    own = session is None
    client = session or aiohttp.ClientSession()
    try:
        ws = await client.ws_connect(url + path, max_msg_size=lp.MAX_FRAME)
        await ws.send_str(lp.encode(lp.Hello(**fields)))
        msg = await ws.receive()
        answer: lp.Welcome | lp.Refused
        if msg.type == aiohttp.WSMsgType.TEXT:
            frame = lp.SERVER_FRAMES.validate_json(msg.data)
            assert isinstance(frame, lp.Welcome | lp.Refused), frame
            answer = frame
        else:
            answer = lp.Refused(reason="invalid", message=f"link closed: {msg.type}")
        connector = ScriptedConnector(ws, answer)
        if isinstance(answer, lp.Welcome):
            connector.start()
        try:
            yield connector
        finally:
            await connector.close()
    finally:
        if own:
            await client.close()


@asynccontextmanager
async def connector_process(
    ws_url: str, backend_url: str, connector_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real `infero llm` process linked to `ws_url` (killed if left running)."""
    environ = {
        **os.environ,
        "SERVER_URL": ws_url,
        "CLIENT_KEY": "ck",
        "CLIENT_ID": connector_id,
        "COMPLETION_BASE_URL": backend_url,
        "RECONNECT": "true",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from infero.cli import llm_main; llm_main()",
        env=environ,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
