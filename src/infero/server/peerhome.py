"""The home side of the peer link: streams other instances open here, served in process.

`HomeEndpoint.handle` is the WebSocket endpoint (`GET /api/peer/v1/link`, peer key checked in
constant time at the upgrade). Each Request frame, once its body arrived, is served by
`serve` (peer.py). A relayed OpenAI request is answered straight onto its `PeerStream`
(`start`, then `write`: the stream is the relay's `Client`), with no aiohttp request or
response built for it; the other paths (MCP, control, error answers) run as an aiohttp
request of this instance that never crossed HTTP, the `PeerStream` being its writer and
transport. Either way the answer leaves as Head, body and End frames (a small answer in one
write), each stream within its flow-control window (`WINDOW` bytes not yet credited by the
asking instance). Cancel cancels the handler
(which cancels the request at the connector); the link closing cancels every stream. At most
`MAX_STREAMS` streams per link, request bodies up to `max_body` bytes (the larger of
MAX_BODY_BYTES and BROKER_MAX_REQ_BYTES). See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError
from yarl import URL

from infero.protocol import link as lp
from infero.server.exchange import HOP_BY_HOP
from infero.server.linkserver import INLINE_BODY
from infero.server.middleware import REQUEST_ID_KEY
from infero.server.peerlink import (
    ERROR_HEADER,
    FEATURES_HEADER,
    HEARTBEAT,
    KEY_HEADER,
    MAX_STREAMS,
    WHOLE_ANSWERS,
    WINDOW,
)
from infero.server.peerwire import CLOSE_GOING_AWAY, OP_BINARY, OP_TEXT, Wire, accept

logger = logging.getLogger(__name__)

Frames = list[tuple[int, bytes]]
"""WebSocket frames to send: (opcode, payload)."""

Handler = Callable[["PeerStream"], Awaitable[web.StreamResponse | None]]
"""Serves a stream: returns the answer to send, or None when it answered on the stream itself
(as `OpenAIRelay.relay` does)."""


_ERROR_HEADER = ERROR_HEADER.lower()


def authorized(request: web.Request, peer_key: str) -> bool:
    """Whether the request carries the peer key (constant-time compare)."""
    given = request.headers.get(KEY_HEADER, "")
    return bool(peer_key) and hmac.compare_digest(given.encode(), peer_key.encode())


class PeerStream(AbstractStreamWriter):
    """One stream of a peer link: the request it carries, and the writer, transport and
    protocol of the in-process aiohttp request that serves it."""

    ssl_context = None
    sockname = None
    _reading_paused = False
    """The body's StreamReader reads this of its protocol, and calls `pause_reading` and
    `resume_reading`: the whole body is in it already, nothing to pause or resume."""

    def __init__(self, link: HomeLink, frame: lp.Request) -> None:
        self.link = link
        self.frame = frame
        self.id = frame.id
        self.peername = link.peername
        self.body = bytearray()
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict(frame.headers))
        self.task: asyncio.Task[None] | None = None
        self._head: lp.Head | None = None
        """Written by the handler, not sent yet (it leaves with the first body bytes)."""
        self._unread = 0
        """Body bytes sent and not yet credited by the asking instance."""
        self._waiter: asyncio.Future[None] | None = None
        self.ended = False
        """End (or an error End) was sent, or the asking instance cancelled the stream."""

    # ---- the request -----------------------------------------------------------------------

    def request(self, path: str, *, with_body: bool = False) -> web.Request:
        """An aiohttp request for `path` (with query) whose answer goes back on this stream;
        `with_body`: its `content` holds the stream's body (else the handler is given it)."""
        frame = self.frame
        url = URL(path, encoded=True)
        message = RawRequestMessage(
            frame.method, path, HttpVersion11, self.headers, (), False, None, False, False, url
        )
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        payload = EMPTY_PAYLOAD
        if with_body:  # limit above the body's size: the reader never asks to pause
            payload = StreamReader(self, max(len(self.body), 2**16), loop=loop)  # type: ignore[arg-type]
            if self.body:
                payload.feed_data(bytes(self.body))
            payload.feed_eof()
        # web.Request reads `ssl_context`, `peername`, `sockname` and `transport` of its
        # protocol: the stream has them (a RequestHandler would need a TCP connection).
        request = web.Request(message, payload, self, self, task, loop)  # type: ignore[arg-type]
        if frame.request_id:
            request[REQUEST_ID_KEY] = frame.request_id
        return request

    @property
    def transport(self) -> Any:
        """The request's transport: this stream (`abort`/`close` end it with an error)."""
        return self

    def is_closing(self) -> bool:
        return self.ended or self.link.closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default

    def abort(self) -> None:
        """The handler gave up on the answer: the asking instance gets an error End."""
        self._fail("backend_error", "the home instance broke off the answer")

    def close(self) -> None:
        self.abort()

    def pause_reading(self) -> None:
        return

    def resume_reading(self, resume_parser: bool = True) -> None:
        return

    # ---- fed by the link reader ------------------------------------------------------------

    def feed(self, payload: memoryview) -> bool:
        """Request body bytes; True once the body is complete (False also when too long)."""
        self.body += payload
        return len(self.body) >= self.frame.body_len

    def credit(self, size: int) -> None:
        self._unread -= size
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """The asking instance gave up the stream (it reads nothing more of it)."""
        self.ended = True
        self._wake()
        if self.task is not None:
            self.task.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: str, message: str) -> None:
        if self.ended:
            return
        self.ended = True
        self._wake()
        end = lp.End(id=self.id, error=lp.LinkError(code=code, message=message))
        with contextlib.suppress(ConnectionError):
            self.link.put_now([(OP_TEXT, lp.encode(end).encode())])

    # ---- openai_api.Client: a relayed answer, without an aiohttp response ------------------

    async def start(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        streamed: bool,
        sse: bool,
        overhead_ms: float,
    ) -> PeerStream:
        """Begin the answer of a relayed request: its head leaves with the first body bytes,
        or at the next turn of the loop when `streamed`. The asking instance sets its own
        `X-Infero-*` headers and an event stream's (`sse` and `overhead_ms` are its to show):
        none of those is sent, and so none of a backend can pass for the home's."""
        kept = [(k, v) for k, v in headers if not k.lower().startswith("x-infero-")]
        self._head = lp.Head(id=self.id, status=status, headers=kept)
        if streamed:
            asyncio.get_running_loop().call_soon(self.send_headers)
        return self

    # ---- AbstractStreamWriter --------------------------------------------------------------

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        status = int(status_line.split(" ", 2)[1])
        # Not the headers the asking instance sets itself (it would drop them), except the
        # home's error code.
        kept = [
            (k, v)
            for k, v in headers.items()
            if (low := k.lower()) == _ERROR_HEADER
            or not (low in HOP_BY_HOP or low.startswith("x-infero-"))
        ]
        self._head = lp.Head(id=self.id, status=status, headers=kept)

    def send_headers(self) -> None:
        head = self._head
        if head is not None and not self.ended:
            self._head = None
            with contextlib.suppress(ConnectionError):
                self.link.put_now([(OP_TEXT, lp.encode(head).encode())])

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        await self._send(chunk, end=False)

    async def write_eof(self, chunk: bytes | bytearray | memoryview = b"") -> None:
        if not self.ended:
            await self._send(chunk, end=True)

    async def drain(self) -> None:
        return

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return

    def enable_chunking(self) -> None:
        return

    async def _send(self, chunk: bytes | bytearray | memoryview, *, end: bool) -> None:
        if self.ended:
            raise ConnectionResetError("peer stream closed")
        frames: Frames = []
        head = self._head
        view = memoryview(chunk)
        size = len(view)
        self.output_size += size
        if head is not None:
            self._head = None
            if end and self.link.whole_answers and size <= INLINE_BODY:
                self.ended = True  # the whole answer in one frame, which ends the stream
                await self.link.put([(OP_BINARY, lp.pack_answer(head, view))])
                return
            frames.append((OP_TEXT, lp.encode(head).encode()))
        pos = 0
        while pos < size:
            room = WINDOW - self._unread
            if room <= 0:
                await self.link.put(frames)
                frames = []
                await self._credit()
                continue
            piece = view[pos : pos + min(room, lp.BODY_CHUNK)]
            frames.append((OP_BINARY, lp.pack_body(lp.RESPONSE_BODY, self.id, piece)))
            self._unread += len(piece)
            pos += len(piece)
        if end:
            self.ended = True
            frames.append((OP_TEXT, lp.encode(lp.End(id=self.id)).encode()))
        if frames:
            await self.link.put(frames)

    async def _credit(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self.ended:
            raise ConnectionResetError("peer stream closed")

    # ---- serving ---------------------------------------------------------------------------

    async def serve(self, handler: Handler) -> None:
        """Run the handler and send its whole answer (then End); a handler that answered on
        the stream itself (None) has ended it."""
        try:
            response = await handler(self)
            if response is None:
                self._fail("invalid", "the home instance ended the answer unfinished")
                return
            if not response.prepared:
                await response.prepare(self.request(self.frame.path))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the stream was aborted or the link closed: nothing more to send
        except Exception:
            logger.exception("peer stream %s (%s): the handler failed", self.id, self.frame.path)
            self._fail("invalid", "the home instance failed to serve the request")
        finally:
            self.link.done(self)


class HomeLink:
    """One link another instance dialed to this one: reads its frames as they arrive
    (`peerwire.Receiver`) and writes its streams' answers."""

    def __init__(
        self,
        request: web.Request,
        handler: Handler,
        *,
        max_streams: int,
        max_body: int,
    ) -> None:
        self.wire: Wire | None = None
        """Set by `HomeEndpoint` as soon as the connection is taken over."""
        self.whole_answers = WHOLE_ANSWERS in request.headers.get(FEATURES_HEADER, "").split()
        """The asking instance reads a small answer in one frame (`RESPONSE_WHOLE`)."""
        self.peername = request.remote
        self.handler = handler
        self.max_streams = max_streams
        self.max_body = max_body
        self.streams: dict[int, PeerStream] = {}

    def closing(self) -> bool:
        wire = self.wire
        return wire is None or wire.closed

    def put_now(self, frames: Frames) -> None:
        """Write small frames at once (raises ConnectionResetError when the link is gone)."""
        wire = self.wire
        if wire is None:
            raise ConnectionResetError("peer link closed")
        wire.send_all(frames)

    async def put(self, frames: Frames) -> None:
        """Write frames in one write, then wait while the transport holds too much
        (raises ConnectionResetError when the link is gone)."""
        self.put_now(frames)
        wire = self.wire
        if wire is not None and wire.paused:
            await wire.drain()

    def done(self, stream: PeerStream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    def _refuse(self, stream_id: int, code: str, message: str) -> None:
        end = lp.End(id=stream_id, error=lp.LinkError(code=code, message=message))
        with contextlib.suppress(ConnectionError):
            self.put_now([(OP_TEXT, lp.encode(end).encode())])

    def _open(self, frame: lp.Request) -> PeerStream | None:
        """The stream a Request opens (started at once if it has no body), None if refused."""
        if frame.id in self.streams:
            logger.warning("peer link from %s: stream %s opened twice", self.peername, frame.id)
            return None
        if len(self.streams) >= self.max_streams:
            self._refuse(frame.id, "busy", f"{self.max_streams} streams open on this link")
            return None
        if frame.body_len > self.max_body:
            self._refuse(frame.id, "invalid", "request body over MAX_BODY_BYTES")
            return None
        stream = self.streams[frame.id] = PeerStream(self, frame)
        if not frame.body_len:
            self._start(stream)
        return stream

    def _open_whole(self, sid: int, payload: memoryview) -> None:
        """A request and its whole body in one frame."""
        try:
            frame, body = lp.unpack_request(payload)
        except lp.BadFrame as exc:
            logger.warning("peer link from %s: %s", self.peername, exc)
            return
        if frame.id != sid or len(body) != frame.body_len:
            if sid not in self.streams:
                self._refuse(sid, "invalid", "request body not as announced")
            return
        stream = self._open(frame)
        if stream is not None and body:
            stream.body += body
            self._start(stream)

    def _start(self, stream: PeerStream) -> None:
        stream.task = asyncio.create_task(stream.serve(self.handler), name="peer-stream")

    def on_binary(self, data: bytes) -> None:
        try:
            kind, sid, payload = lp.unpack_body(data)
        except lp.BadFrame as exc:
            logger.warning("peer link from %s: %s", self.peername, exc)
            return
        if kind == lp.REQUEST_WITH_BODY:
            self._open_whole(sid, payload)
            return
        streams = self.streams
        stream = streams.get(sid)
        if kind != lp.REQUEST_BODY or stream is None or stream.task is not None:
            return
        if stream.feed(payload):
            if len(stream.body) == stream.frame.body_len:
                self._start(stream)
            else:
                del streams[sid]
                self._refuse(sid, "invalid", "request body longer than announced")

    def on_text(self, data: bytes) -> None:
        try:
            frame = _decode(data)
        except ValidationError as exc:
            logger.warning("peer link from %s: bad frame ignored: %s", self.peername, exc)
            return
        streams = self.streams
        if isinstance(frame, lp.Request):
            self._open(frame)
        elif isinstance(frame, lp.Credit):
            if (stream := streams.get(frame.id)) is not None:
                stream.credit(frame.bytes)
        elif isinstance(frame, lp.Cancel) and (stream := streams.pop(frame.id, None)):
            stream.cancel()

    def on_closed(self, why: str) -> None:
        """The link ended (`run` then cancels the streams still served)."""
        logger.info("peer link from %s ended: %s", self.peername, why)

    async def run(self) -> None:
        """Until the link closes; then until the streams it still served have ended."""
        assert self.wire is not None
        try:
            await self.wire.wait_closed()
        finally:
            left = list(self.streams.values())
            self.streams.clear()
            for stream in left:
                stream.cancel()
            tasks = [s.task for s in left if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)


_decode = lp.SERVER_FRAMES.validate_json


class HomeEndpoint:
    """`GET /api/peer/v1/link`: the links other instances dialed to this one."""

    def __init__(
        self,
        *,
        peer_key: str,
        handler: Handler,
        max_body: int,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.peer_key = peer_key
        self.handler = handler
        self.max_body = max_body
        self.max_streams = max_streams
        self.links: set[HomeLink] = set()
        self.routes: dict[str, Handler] = {}
        """Handlers of stream paths by prefix, mounted by other modules (MCP: `/mcp/`)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not authorized(request, self.peer_key):
            return web.json_response({"error": {"message": "bad peer key"}}, status=401)
        # aiohttp answers the upgrade; the connection is then read and written by a wire
        # (peerwire.py), without aiohttp's per-message queue and reader task.
        ws = web.WebSocketResponse(compress=False, autoping=False)
        link = HomeLink(request, self.handler, max_streams=self.max_streams, max_body=self.max_body)
        await ws.prepare(request)
        link.wire = wire = accept(request, link, max_size=lp.MAX_FRAME, heartbeat=HEARTBEAT)
        self.links.add(link)
        logger.info("peer link from %s open", link.peername)
        try:
            await link.run()
        finally:
            self.links.discard(link)
            wire.close(CLOSE_GOING_AWAY, "shutdown")
            logger.info("peer link from %s closed", link.peername)
        return ws

    async def close(self) -> None:
        """Server shutdown: close every link (the asking instances fail their streams)."""
        for link in list(self.links):
            if link.wire is not None:
                link.wire.close(CLOSE_GOING_AWAY, "shutdown")
