"""`python -m bench.idle_links`: many simulated idle connectors in one process.

Each opens a real link to the server (`Hello` with kind `llm`), waits for `Welcome`, then only
answers pings. Prints `{"connected": N, "refused": M, "reason": ...}` once every link has its
answer, and holds the links open until SIGTERM. With `--churn-per-s R`, every 1/R s the oldest
link leaves and a new connector (a new id) joins: R joins and R leaves per second.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from pydantic import ValidationError

from bench._loop import announce, run, stop_event
from infero.protocol import link

CONNECT_AT_ONCE = 64
"""Handshakes in flight at the same time (a reconnect storm would be larger; this is memory)."""


class _Refused(Exception):
    """The server did not welcome the link."""


async def _handshake(ws: aiohttp.ClientWebSocketResponse, hello: link.Hello) -> None:
    await ws.send_str(link.encode(hello))
    msg = await ws.receive(timeout=30)
    if msg.type is not aiohttp.WSMsgType.TEXT:
        raise _Refused(f"link closed during handshake ({msg.type.name})")
    try:
        frame = link.SERVER_FRAMES.validate_json(msg.data)
    except ValidationError as exc:
        raise _Refused(f"bad answer to hello: {exc}") from None
    if not isinstance(frame, link.Welcome):
        raise _Refused(f"answer to hello: {msg.data[:200]}")


async def _answer_pings(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        try:
            frame = link.SERVER_FRAMES.validate_json(msg.data)
        except ValidationError:
            continue
        if isinstance(frame, link.Ping):
            await ws.send_str(link.encode(link.Pong(ts=frame.ts)))


async def hold_links(
    url: str, client_key: str, count: int, prefix: str, churn_per_s: float = 0.0
) -> None:
    """Open `count` links, announce how many were welcomed, hold them (churning) until stopped."""
    stop = stop_event()
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    sockets: deque[aiohttp.ClientWebSocketResponse] = deque()
    refused: list[str] = []
    readers: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def open_one(i: int) -> aiohttp.ClientWebSocketResponse | None:
            hello = link.Hello(
                id=f"{prefix}-{i}",
                name=f"idle {i}",
                client_key=client_key,
                backend="demo",
                models=["idle"],
                max_concurrency=1,
            )
            async with gate:
                try:
                    ws = await session.ws_connect(
                        url, max_msg_size=link.MAX_FRAME, autoping=True, compress=0
                    )
                except aiohttp.ClientError as exc:
                    refused.append(str(exc))
                    return None
                try:
                    await _handshake(ws, hello)
                except (_Refused, TimeoutError) as exc:
                    refused.append(str(exc))
                    await ws.close()
                    return None
            sockets.append(ws)
            return ws

        def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            task = asyncio.create_task(_answer_pings(ws))
            readers.add(task)
            task.add_done_callback(readers.discard)

        async def join(i: int) -> None:
            ws = await open_one(i)
            if ws is not None:
                read(ws)

        await asyncio.gather(*(open_one(i) for i in range(count)))
        for ws in sockets:
            read(ws)
        first = refused[0] if refused else ""
        announce(json.dumps({"connected": len(sockets), "refused": len(refused), "reason": first}))
        if churn_per_s > 0:
            await _churn(stop, sockets, join, count, 1 / churn_per_s)
        await stop.wait()
        for ws in sockets:
            await ws.close()
        for task in list(readers):
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def _churn(
    stop: asyncio.Event,
    sockets: deque[aiohttp.ClientWebSocketResponse],
    join: Callable[[int], Coroutine[Any, Any, None]],
    first_new: int,
    period: float,
) -> None:
    """Until `stop`: every `period` s the oldest link leaves and a new connector joins."""
    joining: set[asyncio.Task[None]] = set()
    tick = time.monotonic()
    for i in itertools.count(first_new):
        tick += period
        try:
            async with asyncio.timeout(max(0.0, tick - time.monotonic())):
                await stop.wait()
            break
        except TimeoutError:
            pass
        if sockets:
            await sockets.popleft().close()
        task = asyncio.create_task(join(i))
        joining.add(task)
        task.add_done_callback(joining.discard)
    await asyncio.gather(*joining, return_exceptions=True)


def main() -> None:
    """Parse the flags and hold the links."""
    parser = argparse.ArgumentParser(prog="python -m bench.idle_links", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://host:port/api/llm/connect")
    parser.add_argument("--client-key", default="")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prefix", default="idle")
    parser.add_argument(
        "--churn-per-s", type=float, default=0.0, help="joins (and leaves) per second"
    )
    args = parser.parse_args()
    run(hold_links(args.url, args.client_key, args.count, args.prefix, args.churn_per_s))


if __name__ == "__main__":
    main()
