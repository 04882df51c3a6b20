"""The generic link client: handshake, refusals, liveness and the reconnect schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from infero.common.backoff import Backoff
from infero.common.linkclient import Link, LinkClient
from infero.protocol import link
from support.server import running_server

ServerFactory = Callable[..., Awaitable[TestServer]]


class Handler:
    """Records what the link client tells its runtime."""

    def __init__(self) -> None:
        self.hellos = 0
        self.up = asyncio.Event()
        self.downs = 0
        self.frames: asyncio.Queue[Any] = asyncio.Queue()

    def hello(self) -> link.Hello:
        self.hellos += 1
        return link.Hello(id="c1", client_key="ck", models=[f"model-{self.hellos}"])

    def link_up(self, current: Link, welcome: link.Welcome) -> None:
        self.up.set()

    def frame_received(self, frame: link.ServerFrame) -> None:
        self.frames.put_nowait(frame)

    def body_received(self, stream_id: int, payload: memoryview) -> None:
        self.frames.put_nowait((stream_id, bytes(payload)))

    async def link_down(self) -> None:
        self.downs += 1


def server_app(
    behaviour: str, seen: list[Any], pinged: asyncio.Queue[int] | None = None, **welcome: Any
) -> web.Application:
    """`accept` (and answer pings), `refuse:<reason>`, `close` (right after welcome), `mute`."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        hello = link.CONNECTOR_FRAMES.validate_json((await ws.receive()).data)
        seen.append(hello)
        if behaviour.startswith("refuse:"):
            reason = behaviour.split(":", 1)[1]
            await ws.send_str(
                link.encode(link.Refused.model_validate({"reason": reason, "message": "no way"}))
            )
            await ws.close()
            return ws
        await ws.send_str(link.encode(link.Welcome(id="c1", **welcome)))
        if behaviour == "close":
            await ws.close(code=1011, message=b"bye")
            return ws
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = link.CONNECTOR_FRAMES.validate_json(msg.data)
            seen.append(frame)
            if isinstance(frame, link.Ping) and behaviour == "accept":
                await ws.send_str(link.encode(link.Pong(ts=frame.ts)))
                if pinged is not None:
                    pinged.put_nowait(sum(isinstance(f, link.Ping) for f in seen))
        return ws

    app = web.Application()
    app.router.add_get("/link", handle)
    return app


def url(server: TestServer) -> str:
    return f"ws://127.0.0.1:{server.port}/link"


async def test_refused_as_unauthorized_is_fatal_and_logged_with_the_reason(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    server = await aiohttp_server(server_app("refuse:unauthorized", seen))
    client = LinkClient(url(server), Handler(), component="test", reconnect=True)
    async with asyncio.timeout(5):
        assert await client.run() == 1
    assert "unauthorized: no way" in caplog.text
    assert len(seen) == 1


async def test_unreachable_server_without_reconnect_exits_non_zero_with_a_clear_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = LinkClient("ws://127.0.0.1:9/link", Handler(), component="test", reconnect=False)
    async with asyncio.timeout(5):
        assert await client.run() == 1
    record = caplog.records[-1]
    assert record.levelno == logging.ERROR
    assert "cannot reach the server at ws://127.0.0.1:9/link" in record.getMessage()
    assert "--reconnect" in record.getMessage()


async def test_reconnect_follows_the_backoff_schedule_without_real_waiting() -> None:
    delays: list[float] = []
    client: LinkClient

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 12:
            client.stop()

    client = LinkClient(
        "ws://127.0.0.1:9/link", Handler(), component="test", reconnect=True, sleep=sleep
    )
    async with asyncio.timeout(5):
        assert await client.run() == 0
    assert delays == [1, 1, 1, 5, 5, 5, 15, 15, 15, 30, 30, 30]


async def test_attempt_counter_resets_after_a_successful_connection(
    aiohttp_server: ServerFactory,
) -> None:
    seen: list[Any] = []
    server = await aiohttp_server(server_app("close", seen))
    handler = Handler()
    delays: list[float] = []
    client: LinkClient

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 4:
            client.stop()

    client = LinkClient(
        url(server), handler, component="test", reconnect=True, sleep=sleep, backoff=Backoff()
    )
    async with asyncio.timeout(5):
        assert await client.run() == 0
    assert delays == [1, 1, 1, 1]
    assert handler.downs == 4
    assert [h.models for h in seen] == [["model-1"], ["model-2"], ["model-3"], ["model-4"]]
    assert {h.instance for h in seen} == {client.instance}
    assert client.instance


async def test_lost_link_without_reconnect_exits_non_zero(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await aiohttp_server(server_app("close", []))
    client = LinkClient(url(server), Handler(), component="test", reconnect=False)
    async with asyncio.timeout(5):
        assert await client.run() == 1
    assert "link to" in caplog.text
    assert "lost" in caplog.text


async def test_quiet_link_is_pinged_and_a_silent_server_is_dropped(
    aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    server = await aiohttp_server(server_app("mute", seen, heartbeat_interval=0.02, dead_after=0.2))
    client = LinkClient(url(server), Handler(), component="test", reconnect=False)
    async with asyncio.timeout(5):
        assert await client.run() == 1
    assert any(isinstance(frame, link.Ping) for frame in seen)
    assert "no frame from the server for 0.2s" in caplog.text


async def test_answered_pings_keep_the_link_up_past_dead_after(
    aiohttp_server: ServerFactory,
) -> None:
    seen: list[Any] = []
    pinged: asyncio.Queue[int] = asyncio.Queue()
    server = await aiohttp_server(
        server_app("accept", seen, pinged, heartbeat_interval=0.02, dead_after=0.4)
    )
    handler = Handler()
    client = LinkClient(url(server), handler, component="test", reconnect=False)
    task = asyncio.create_task(client.run())
    async with asyncio.timeout(5):
        await handler.up.wait()
        while await pinged.get() < 25:  # 25 pings: well past dead_after (0.4s)
            pass
        assert not task.done()
        client.stop()
        assert await task == 0


async def test_a_second_connector_with_a_linked_id_is_refused_logs_what_to_change_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(client_key="ck") as srv:
        first_handler = Handler()
        first = LinkClient(srv.ws_url, first_handler, component="test", reconnect=True)
        first_run = asyncio.create_task(first.run())
        delays: list[float] = []
        second: LinkClient

        async def sleep(delay: float) -> None:
            delays.append(delay)
            if len(delays) == 5:
                second.stop()

        second = LinkClient(srv.ws_url, Handler(), component="test", reconnect=True, sleep=sleep)
        async with asyncio.timeout(10):
            await first_handler.up.wait()
            assert await second.run() == 0
            assert delays == [1, 1, 1, 5, 5]
            assert not first_run.done()
            assert srv.status("c1") not in (None, "gone")
            first.stop()
            assert await first_run == 0
    refusals = [r for r in caplog.records if "refused the connector" in r.getMessage()]
    assert len(refusals) == 5
    assert all(r.levelno == logging.ERROR for r in refusals)
    assert (
        "duplicate: another connector with CLIENT_ID=c1 is linked; "
        "give each connector its own CLIENT_ID" in refusals[0].getMessage()
    )
    assert second.last_error.startswith("refused by server: duplicate")


async def test_several_server_urls_are_tried_in_turn_before_any_backoff_delay(
    aiohttp_server: ServerFactory,
) -> None:
    seen: list[Any] = []
    server = await aiohttp_server(server_app("accept", seen))
    handler = Handler()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    client = LinkClient(
        f"ws://127.0.0.1:9/link, {url(server)}",
        handler,
        component="test",
        reconnect=False,
        sleep=sleep,
    )
    task = asyncio.create_task(client.run())
    async with asyncio.timeout(5):
        await handler.up.wait()
        assert client.url == url(server)
        assert delays == [], "the second URL is tried at once"
        client.stop()
        assert await task == 0
    assert len([h for h in seen if isinstance(h, link.Hello)]) == 1


async def test_a_full_round_of_unreachable_urls_waits_the_backoff_delay_once() -> None:
    delays: list[float] = []
    client: LinkClient

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 3:
            client.stop()

    client = LinkClient(
        "ws://127.0.0.1:9/a,ws://127.0.0.1:9/b,ws://127.0.0.1:9/c",
        Handler(),
        component="test",
        reconnect=True,
        sleep=sleep,
    )
    async with asyncio.timeout(5):
        assert await client.run() == 0
    assert delays == [1, 1, 1], "one delay per round of three URLs"


async def test_without_reconnect_every_url_is_tried_once_then_exit_non_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = LinkClient(
        "ws://127.0.0.1:9/a,ws://127.0.0.1:9/b", Handler(), component="test", reconnect=False
    )
    async with asyncio.timeout(5):
        assert await client.run() == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot reach the server at ws://127.0.0.1:9/a" in m for m in messages)
    assert "cannot reach the server at ws://127.0.0.1:9/b" in messages[-1]
    assert "--reconnect" in messages[-1]


async def test_stop_while_waiting_for_the_welcome_closes_the_link_at_once(
    aiohttp_server: ServerFactory,
) -> None:
    hello_seen = asyncio.Event()
    closes: asyncio.Queue[int | None] = asyncio.Queue()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.receive()
        hello_seen.set()
        await ws.receive()  # never answers the hello: the close is what arrives next
        closes.put_nowait(ws.close_code)
        return ws

    app = web.Application()
    app.router.add_get("/link", handle)
    server = await aiohttp_server(app)
    handler = Handler()
    client = LinkClient(url(server), handler, component="test", reconnect=True)
    task = asyncio.create_task(client.run())
    async with asyncio.timeout(5):  # the handshake's own timeout is 10 s
        await hello_seen.wait()
        client.stop()
        assert await task == 0
        assert await closes.get() == 1000
    assert handler.hellos == 1
    assert not handler.up.is_set()
