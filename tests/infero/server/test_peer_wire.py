"""The peer link's own WebSocket (`peerwire`) against aiohttp's, at both ends, and against
raw bytes for what a well-behaved end never sends."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from websockets.utils import apply_mask

from infero.common.tls import client_context
from infero.server import peerwire as pw
from support.certs import TestCA

SIZES = (0, 125, 126, 65535, 65536, 300_000)
"""Payload sizes across the three length encodings."""
LIMIT = 1_000_000


class Inbox:
    """A receiver that keeps what it is told."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_text(self, data: bytes) -> None:
        self.messages.put_nowait(("text", data))

    def on_binary(self, data: bytes) -> None:
        self.messages.put_nowait(("binary", data))

    def on_closed(self, why: str) -> None:
        assert not self.closed.done(), "told twice"
        self.closed.set_result(why)

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(5):
            return await self.messages.get()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(handler: Handler, context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An aiohttp server with `handler` at /ws; its base URL."""
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def echo(request: web.Request) -> web.StreamResponse:
    """aiohttp's own WebSocket: sends back what it gets; says when pinged."""
    ws = web.WebSocketResponse(max_msg_size=LIMIT, autoping=False)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.PONG:
            await ws.send_str(f"pong {msg.data.decode()}")
    return ws


def accepting(inboxes: list[Inbox], *, heartbeat: float = 30.0) -> Handler:
    """The accepting end: each connection gets a wire and an inbox of its own (appended to
    `inboxes`), and a task that echoes what the inbox receives."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=False)
        inbox = Inbox()
        inboxes.append(inbox)
        await ws.prepare(request)
        wire = pw.accept(request, inbox, max_size=LIMIT, heartbeat=heartbeat)
        reader = asyncio.create_task(_echo_from(inbox, wire))
        await wire.wait_closed()
        reader.cancel()
        return ws

    return handle


async def _echo_from(inbox: Inbox, wire: pw.Wire) -> None:
    while True:
        kind, data = await inbox.messages.get()
        wire.send(pw.OP_TEXT if kind == "text" else pw.OP_BINARY, data)


async def test_a_dialed_wire_talks_to_aiohttps_websocket_in_every_length() -> None:
    inbox = Inbox()
    async with serving(echo) as url:
        wire = await pw.dial(url + "/ws", {}, inbox, max_size=LIMIT, heartbeat=30)
        for size in SIZES:
            data = os.urandom(size)
            wire.send(pw.OP_BINARY, data)
            assert await inbox.next() == ("binary", data)
        wire.send(pw.OP_TEXT, "héllo".encode())
        assert await inbox.next() == ("text", "héllo".encode())
        wire.close()
        assert await inbox.closed == "closed here (1000)"


async def test_a_dialed_wire_answers_pings_and_hears_a_close() -> None:
    async def pinging(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        await ws.ping(b"are you there")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
        await ws.close(code=4000, message=b"done here")
        return ws

    inbox = Inbox()
    async with serving(pinging) as url:
        wire = await pw.dial(url + "/ws", {}, inbox, max_size=LIMIT, heartbeat=30)
        async with asyncio.timeout(5):
            assert await inbox.closed == "closed by the other end (4000 done here)"
        assert wire.closed
        with pytest.raises(ConnectionResetError):
            wire.send(pw.OP_TEXT, b"too late")


async def test_a_refused_upgrade_says_its_status_and_why() -> None:
    async def refusing(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "bad peer key"}}, status=401)

    async with serving(refusing) as url:
        with pytest.raises(pw.HandshakeFailed) as refused:
            await pw.dial(url + "/ws", {}, Inbox(), max_size=LIMIT, heartbeat=30)
    assert refused.value.status == 401
    assert "HTTP 401" in str(refused.value)
    assert "bad peer key" in str(refused.value)


async def test_an_accepted_wire_talks_to_aiohttps_client_and_answers_its_pings() -> None:
    inboxes: list[Inbox] = []
    async with serving(accepting(inboxes)) as url, aiohttp.ClientSession() as http:
        async with http.ws_connect(url + "/ws", max_msg_size=LIMIT, autoping=False) as ws:
            for size in SIZES:
                data = os.urandom(size)
                await ws.send_bytes(data)
                msg = await ws.receive(timeout=5)
                assert (msg.type, msg.data) == (WSMsgType.BINARY, data)
            await ws.ping(b"ping")
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.PONG, b"ping")
        async with asyncio.timeout(5):
            assert await inboxes[0].closed == "closed by the other end (1000)"


async def test_the_wire_works_over_tls(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path)
    ca.issue(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    inboxes: list[Inbox] = []
    async with serving(accepting(inboxes), server) as url:
        inbox = Inbox()
        context = client_context(str(ca.ca_file))
        wire = await pw.dial(
            url + "/ws", {}, inbox, max_size=LIMIT, heartbeat=30, ssl_context=context
        )
        data = os.urandom(70_000)
        wire.send(pw.OP_BINARY, data)
        assert await inbox.next() == ("binary", data)
        wire.close()
        async with asyncio.timeout(5):
            await inboxes[0].closed
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted without the CA
            await pw.dial(url + "/ws", {}, Inbox(), max_size=LIMIT, heartbeat=30)


# ---- raw bytes: what a well-behaved end never sends ------------------------------------------


def client_frame(first: int, payload: bytes, *, mask: bool = True) -> bytes:
    """A frame as a client writes it, with any first byte (FIN, reserved bits, opcode)."""
    key = b"\x01\x02\x03\x04"
    size = len(payload)
    flag = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, flag | size)
    else:
        head = struct.pack("!BBH", first, flag | 126, size)
    return head + (key + apply_mask(payload, key) if mask else payload)


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection that made the upgrade by hand; the 101's head is read."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked server frame."""
    first, size = await reader.readexactly(2)
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    return first, await reader.readexactly(size)


async def test_a_fragmented_message_arrives_whole_between_control_frames() -> None:
    inboxes: list[Inbox] = []
    async with serving(accepting(inboxes)) as url, raw_client(url) as (reader, writer):
        writer.write(
            client_frame(pw.OP_BINARY, b"one ")  # FIN clear: more follows
            + client_frame(0x80 | pw.OP_PING, b"mid")
            + client_frame(pw.OP_CONTINUATION, b"two ")
            + client_frame(0x80 | pw.OP_CONTINUATION, b"three")
        )
        async with asyncio.timeout(5):
            assert await read_frame(reader) == (0x80 | pw.OP_PONG, b"mid")
            assert await read_frame(reader) == (0x80 | pw.OP_BINARY, b"one two three")


@pytest.mark.parametrize(
    ("frame", "code", "why"),
    [
        (client_frame(0x80 | pw.OP_TEXT, b"x", mask=False), 1002, "masked the wrong way"),
        (client_frame(0xC0 | pw.OP_TEXT, b"x"), 1002, "reserved bits"),
        (client_frame(0x80 | 0x3, b"x"), 1002, "unknown opcode"),
        (client_frame(0x80 | pw.OP_CONTINUATION, b"x"), 1002, "continuation of no message"),
        (client_frame(pw.OP_PING, b"x"), 1002, "control frame fragmented"),
        (struct.pack("!BBQ", 0x80 | pw.OP_BINARY, 0x80 | 127, LIMIT + 1), 1009, "over"),
    ],
)
async def test_a_broken_frame_closes_the_wire_with_its_code(
    frame: bytes, code: int, why: str
) -> None:
    inboxes: list[Inbox] = []
    async with serving(accepting(inboxes)) as url, raw_client(url) as (reader, writer):
        writer.write(frame)
        async with asyncio.timeout(5):
            first, payload = await read_frame(reader)
            assert first == 0x80 | pw.OP_CLOSE
            assert int.from_bytes(payload[:2], "big") == code
            assert await reader.read() == b""  # then the connection ends
            assert why in await inboxes[0].closed


async def test_a_silent_end_is_pinged_then_dropped() -> None:
    inboxes: list[Inbox] = []
    async with serving(accepting(inboxes, heartbeat=0.2)) as url, raw_client(url) as (reader, _):
        async with asyncio.timeout(5):
            assert await read_frame(reader) == (0x80 | pw.OP_PING, b"")
            assert await reader.read() == b""  # no pong: aborted
            assert await inboxes[0].closed == "no answer to a ping within 0.1s"
