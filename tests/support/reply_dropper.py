"""A TCP proxy to Redis that loses one reply: the command ran at Redis, its client sees the
connection lost (redis-py then sends the command again on a new connection)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class ReplyDropper:
    """Once armed, swallows the next reply from Redis and closes that connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.dropped = 0
        self.meanwhile: Callable[[], Awaitable[object]] | None = None
        """Run after the reply is swallowed, before the connection closes (so before the
        client can send the command again): what another client does at that moment."""
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def upstream() -> None:
            while data := await client_r.read(65536):
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if self.armed:
                    self.armed = False
                    self.dropped += 1
                    if self.meanwhile is not None:
                        await self.meanwhile()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in (client_w, redis_w):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@asynccontextmanager
async def reply_dropper(port: int) -> AsyncIterator[ReplyDropper]:
    """A `ReplyDropper` to the Redis on `port`, listening on a free port of loopback."""
    proxy = ReplyDropper(port)
    proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    try:
        yield proxy
    finally:
        proxy.server.close()
        await proxy.server.wait_closed()
