"""The peer link's WebSocket, read without a queue: each message goes to its receiver as soon
as it is parsed, in the transport's `data_received`.

aiohttp's WebSocket puts every message on a queue and wakes a task to read it: one more turn
of the event loop per message at each end of the cross-instance hop (docs/performance.md,
"The peer link's own WebSocket"). `Wire` is the same RFC 6455 connection without that turn:
no extension (the link is never compressed), messages up to `max_size` bytes whether
fragmented or not, pings answered, a close frame answered and the connection closed, and
after `heartbeat` seconds without a frame a ping, the connection aborted when nothing comes
back within half of that. The dialing end (`dial`) makes its own upgrade request; the
accepting end (`accept`) takes over the connection of a request that aiohttp's
`web.WebSocketResponse.prepare` has just upgraded. `ws_frame` also writes the connector
links' small frames (linkserver.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import ssl
import struct
from typing import Protocol

from aiohttp import web
from yarl import URL

try:  # the C version ships in websockets' wheels; the fallback is the same in Python
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - only where websockets was built without its C parts
    from websockets.utils import apply_mask

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009

HEAD_LIMIT = 16 * 1024
"""Bytes of the upgrade answer's head read at most (`dial`)."""
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 section 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        head = _SHORT.pack(0x80 | opcode, size)
    elif size < 1 << 16:
        head = _MEDIUM.pack(0x80 | opcode, 126, size)
    else:
        head = _LONG.pack(0x80 | opcode, 127, size)
    return head + payload


_masks = random.Random()  # seeded from os.urandom; one key per frame, as aiohttp's client does


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final WebSocket frame masked with a fresh key, as a client sends it."""
    size = len(payload)
    if size < 126:
        head = _SHORT.pack(0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = _MEDIUM.pack(0x80 | opcode, 0x80 | 126, size)
    else:
        head = _LONG.pack(0x80 | opcode, 0x80 | 127, size)
    key = _masks.getrandbits(32).to_bytes(4, "big")
    return b"".join((head, key, apply_mask(payload, key)))


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` answering `Sec-WebSocket-Key` `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class Transport(Protocol):
    """What a wire needs of its transport (uvloop's are not `asyncio.Transport` subclasses)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...


class Receiver(Protocol):
    """Where a wire's messages go (called from `data_received`: never blocks)."""

    def on_text(self, data: bytes) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def on_closed(self, why: str) -> None:
        """The connection ended (once; `why` for the log and for failed streams)."""


class WireError(Exception):
    """The other end broke the protocol: the connection closes with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class HandshakeFailed(ConnectionError):
    """The upgrade was refused or not understood (`status`: the HTTP status, 0 if none)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Wire(asyncio.Protocol):
    """One WebSocket connection after its upgrade (`client`: this end masks what it sends
    and expects unmasked frames)."""

    def __init__(
        self, receiver: Receiver, *, client: bool, max_size: int, heartbeat: float
    ) -> None:
        self.receiver = receiver
        self.client = client
        self.max_size = max_size
        self.heartbeat = heartbeat
        self.transport: Transport | None = None
        self.closed = False
        """No more frames are sent (a close frame went, or the connection is gone)."""
        self.why = ""
        """Why the connection ended, once it did."""
        self._frame = masked_frame if client else ws_frame
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._part_op = 0
        self._heard = False
        self._pinged = False
        self._beat: asyncio.TimerHandle | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handshake: tuple[asyncio.Future[None], str] | None = None
        self._original: asyncio.BaseProtocol | None = None
        self._open = False
        """The upgrade is done: frames flow, and the receiver hears of the end."""

    # ---- the transport's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # any transport has these

    def _opened(self) -> None:
        self._open = True
        self._beat = asyncio.get_running_loop().call_later(self.heartbeat, self._on_beat)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended_because(str(exc) if exc else "connection closed")
        if self._original is not None:  # aiohttp's protocol of the upgraded request: its end
            self._original.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if self._handshake is not None:
            buffer += data
            self._answered()
            return
        if buffer:
            buffer += data
            try:
                used = self._parse(buffer)
            except WireError as error:
                self._fail(error)
                return
            del buffer[:used]
            return
        try:
            used = self._parse(data)
        except WireError as error:
            self._fail(error)
            return
        if used < len(data) and not self.closed:
            buffer += data[used:]

    # ---- frames in ----------------------------------------------------------------------------

    def _parse(self, data: bytes | bytearray) -> int:
        """Handle the whole frames at the start of `data`; the bytes used."""
        pos, end = 0, len(data)
        masked_in = 0 if self.client else 0x80
        while end - pos >= 2 and not self.closed:
            first, second = data[pos], data[pos + 1]
            if second & 0x80 != masked_in:
                raise WireError(CLOSE_PROTOCOL_ERROR, "frame masked the wrong way for its side")
            size, at = second & 0x7F, pos + 2
            if size == 126:
                if end - at < 2:
                    break
                size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
            elif size == 127:
                if end - at < 8:
                    break
                size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
            if size > self.max_size:
                raise WireError(CLOSE_TOO_BIG, f"frame of {size} bytes over {self.max_size}")
            key = b""
            if masked_in:
                if end - at < 4:
                    break
                key, at = bytes(data[at : at + 4]), at + 4
            if end - at < size:
                break
            payload = bytes(data[at : at + size])
            pos = at + size
            self._on_frame(first, apply_mask(payload, key) if key else payload)
        return pos

    def _on_frame(self, first: int, payload: bytes) -> None:
        self._heard = True
        if first & 0x70:
            raise WireError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension agreed)")
        opcode, final = first & 0x0F, first & 0x80
        if opcode >= OP_CLOSE:
            if not final or len(payload) > 125:
                raise WireError(CLOSE_PROTOCOL_ERROR, "control frame fragmented or too long")
            self._on_control(opcode, payload)
        elif opcode == OP_CONTINUATION:
            if not self._parts:
                raise WireError(CLOSE_PROTOCOL_ERROR, "continuation of no message")
            self._parts.append(payload)
            if sum(map(len, self._parts)) > self.max_size:
                raise WireError(CLOSE_TOO_BIG, f"message over {self.max_size} bytes")
            if final:
                whole, self._parts = b"".join(self._parts), []
                self._deliver(self._part_op, whole)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._parts:
                raise WireError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
            if final:
                self._deliver(opcode, payload)
            else:
                self._parts, self._part_op = [payload], opcode
        else:
            raise WireError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY:
            self.receiver.on_binary(payload)
        else:
            self.receiver.on_text(payload)

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            with contextlib.suppress(ConnectionError):
                self.send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
            reason = payload[2:].decode("utf-8", "replace")
            said = f"{code} {reason}" if reason else str(code)
            self.close(code, "", why=f"closed by the other end ({said})")
        # a pong only says the other end is there, as every frame does (`_heard`)

    def _fail(self, error: WireError) -> None:
        self.close(error.code, str(error), why=f"protocol error: {error}")

    # ---- frames out ---------------------------------------------------------------------------

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one message now (raises ConnectionResetError once the wire is closed)."""
        transport = self.transport
        if self.closed or transport is None:
            raise ConnectionResetError(self.why or "connection closed")
        transport.write(self._frame(opcode, payload))

    def send_all(self, frames: list[tuple[int, bytes]]) -> None:
        """Send messages in one write (raises ConnectionResetError once closed)."""
        transport = self.transport
        if self.closed or transport is None:
            raise ConnectionResetError(self.why or "connection closed")
        frame = self._frame
        transport.write(b"".join([frame(opcode, payload) for opcode, payload in frames]))

    @property
    def paused(self) -> bool:
        """The transport asked for no more writes until it drained: callers check this before
        awaiting `drain`, which saves a coroutine per message in the usual case."""
        return self._paused

    async def drain(self) -> None:
        """Until the transport takes writes again (raises ConnectionResetError once closed)."""
        while self._paused and not self.closed:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._drained, self._ended], return_when=asyncio.FIRST_COMPLETED)
        if self.closed:
            raise ConnectionResetError(self.why or "connection closed")

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", *, why: str = "") -> None:
        """Send a close frame and end the connection (what was written still leaves)."""
        if self.closed:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            payload = code.to_bytes(2, "big") + reason.encode()[:123]
            transport.write(self._frame(OP_CLOSE, payload))
            transport.close()
        said = f"{code} {reason}" if reason else str(code)
        self._ended_because(why or f"closed here ({said})")

    async def wait_closed(self) -> None:
        """Until the connection ended."""
        await asyncio.shield(self._ended)

    def _ended_because(self, why: str) -> None:
        if self._ended.done():
            return
        self.closed = True
        self.why = why
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        self._ended.set_result(None)
        if self._open:
            self.receiver.on_closed(why)
        elif self._handshake is not None:
            waiter, self._handshake = self._handshake[0], None
            if not waiter.done():
                waiter.set_exception(HandshakeFailed(f"connection ended during the upgrade: {why}"))

    def _on_beat(self) -> None:
        """Every `heartbeat` s of silence a ping; nothing back within half of it: abort."""
        loop = asyncio.get_running_loop()
        if self._heard:
            self._heard = self._pinged = False
            self._beat = loop.call_later(self.heartbeat, self._on_beat)
        elif not self._pinged:
            self._pinged = True
            with contextlib.suppress(ConnectionError):
                self.send(OP_PING, b"")
            self._beat = loop.call_later(self.heartbeat / 2, self._on_beat)
        else:
            self._beat = None
            transport = self.transport
            self._ended_because(f"no answer to a ping within {self.heartbeat / 2:g}s")
            if transport is not None:
                transport.abort()

    # ---- the upgrade, dialing side --------------------------------------------------------

    def _answered(self) -> None:
        """The upgrade's answer, once its head is here: frame mode, or the upgrade failed."""
        assert self._handshake is not None
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        waiter, expected = self._handshake
        if end < 0:
            if len(buffer) > HEAD_LIMIT:
                self._handshake = None
                waiter.set_exception(HandshakeFailed("upgrade answer's head too long"))
            return
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        rest = bytes(buffer[end + 4 :])
        buffer.clear()
        self._handshake = None
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 101:
            detail = rest[:200].decode("utf-8", "replace").strip()
            message = f"upgrade refused: HTTP {status}{': ' + detail if detail else ''}"
            waiter.set_exception(HandshakeFailed(message, status))
            return
        if headers.get("upgrade", "").lower() != "websocket" or (
            headers.get("sec-websocket-accept") != expected
        ):
            waiter.set_exception(HandshakeFailed("upgrade answer is not a WebSocket's"))
            return
        if headers.get("sec-websocket-extensions"):
            waiter.set_exception(HandshakeFailed("an extension was agreed that none asked for"))
            return
        waiter.set_result(None)
        self._opened()
        if rest:
            self.data_received(rest)


async def dial(
    url: str,
    headers: dict[str, str],
    receiver: Receiver,
    *,
    max_size: int,
    heartbeat: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Wire:
    """Open a WebSocket to `url` (`ws`, `wss`, `http` or `https`) with `headers` on the
    upgrade request; raise `HandshakeFailed` (or OSError) when it cannot be opened. The
    caller bounds the time it takes."""
    target = URL(url)
    secure = target.scheme in ("https", "wss")
    host, port = target.raw_host, target.port
    if not host or port is None:
        raise HandshakeFailed(f"not a URL with a host: {url}")
    loop = asyncio.get_running_loop()
    wire = Wire(receiver, client=True, max_size=max_size, heartbeat=heartbeat)
    key = base64.b64encode(os.urandom(16)).decode()
    waiter: asyncio.Future[None] = loop.create_future()
    wire._handshake = (waiter, accept_key(key))
    if secure:
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
    else:
        context = None
    await loop.create_connection(lambda: wire, host, port, ssl=context)
    authority = f"[{host}]" if ":" in host else host
    if not target.is_default_port():
        authority += f":{port}"
    lines = [
        f"GET {target.raw_path_qs} HTTP/1.1",
        f"Host: {authority}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    assert wire.transport is not None
    wire.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    try:
        await waiter
    except BaseException:
        if wire.transport is not None:
            wire.transport.abort()
        raise
    return wire


def accept(request: web.Request, receiver: Receiver, *, max_size: int, heartbeat: float) -> Wire:
    """Take over the connection of `request`, which `web.WebSocketResponse.prepare` has just
    upgraded (call it before the next await: no frame can have come in yet). aiohttp's own
    protocol is told when the connection ends."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the upgraded request's connection is gone")
    wire = Wire(receiver, client=False, max_size=max_size, heartbeat=heartbeat)
    wire._original = transport.get_protocol()
    transport.set_protocol(wire)
    wire.connection_made(transport)
    wire._opened()
    return wire
